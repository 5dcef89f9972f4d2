//! The invariants the crate's `unsafe` rests on, seen through the public API: a
//! promise core's handle count (a field of the lock's own word) and who receives
//! the outcome must survive user code that panics while the core's lock is held
//! (a value's `Clone`), and a timer callback stored in its timer's place must be
//! dropped exactly once on every path. A handler must also outlive a cancellation
//! that races its parent's settlement, and the waker a task is polled with (which
//! borrows the poll's reference to the task) must stay good for the whole poll.

mod common;

use std::cell::Cell;
use std::future::Future;
use std::mem::{align_of_val, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{within_for, MARK};
use thenable::{EventLoop, Promise};

/// A value whose `Clone` panics while `armed` is set (once: the first clone
/// disarms it), as a user's `Clone` may.
#[derive(Debug)]
struct Fussy {
    armed: Arc<AtomicBool>,
    id: u32,
}

impl Clone for Fussy {
    fn clone(&self) -> Self {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("{MARK} a value's clone failed");
        }
        Fussy {
            armed: self.armed.clone(),
            id: self.id,
        }
    }
}

fn fussy(id: u32) -> (Fussy, Arc<AtomicBool>) {
    let armed = Arc::new(AtomicBool::new(true));
    (
        Fussy {
            armed: armed.clone(),
            id,
        },
        armed,
    )
}

#[test]
fn a_clone_that_panics_while_a_handle_is_awaited_consumes_that_handle_once() {
    within_for(Duration::from_secs(10), || {
        let event_loop = EventLoop::new();
        let (first, resolver) = Promise::<Fussy>::pending();
        let (second, third) = (first.clone(), first.clone());
        let (value, armed) = fussy(7);
        assert!(resolver.resolve(value));
        // Polled by hand, so that a panic leaving `poll` is seen; the promise is
        // dropped after it, in the state the panic left it.
        let polled = catch_unwind(AssertUnwindSafe(|| {
            let mut first = pin!(first);
            match first.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Err(error)) => error.is_panic(),
                _ => false,
            }
        }));
        assert!(!armed.load(Ordering::SeqCst), "the value was cloned");
        assert!(
            polled.unwrap_or(true),
            "the panic became the first handle's rejection, or left its poll"
        );
        // Two handles are left, and each must receive the value: the panicking
        // poll and the drop after it consumed one handle between them, not two.
        let second = catch_unwind(AssertUnwindSafe(|| event_loop.block_on(second)));
        let third = catch_unwind(AssertUnwindSafe(|| event_loop.block_on(third)));
        let ids = |r: Result<Result<Fussy, thenable::Error>, _>| match r {
            Ok(Ok(value)) => Ok(value.id),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("panicked".to_string()),
        };
        assert_eq!((ids(second), ids(third)), (Ok(7), Ok(7)));
    });
}

#[test]
fn a_clone_that_panics_while_settling_strands_no_consumer() {
    within_for(Duration::from_secs(10), || {
        let event_loop = EventLoop::new();
        let (promise, resolver) = Promise::<Fussy>::pending();
        // Two consumers of one cloned promise: the first is given a clone, the
        // second the value itself.
        let first = promise.clone().map(|value| value.id);
        let second = promise.map(|value| value.id + 1);
        let (value, _armed) = fussy(7);
        // Whether the panic reaches the resolver or becomes the first consumer's
        // rejection, neither consumer may be left waiting for ever.
        let _ = catch_unwind(AssertUnwindSafe(|| resolver.resolve(value)));
        drop(resolver);
        let first = event_loop.block_on(first);
        let second = event_loop.block_on(second);
        assert!(
            !matches!(&first, Err(error) if error.is_deadlock()),
            "the first consumer was dropped unserved: {first:?}"
        );
        assert_eq!(second.map_err(|e| e.to_string()), Ok(8));
    });
}

/// A `then` child cancelled on one thread while its parent settles on another:
/// whichever way they interleave, the child's handler is kept to run once (a
/// `finally` runs on cancellation). Many rounds, since the window is narrow; each
/// round's count is exact.
#[test]
fn a_finally_runs_once_when_its_cancellation_races_the_settlement() {
    use std::sync::Barrier;
    use std::thread;
    const ROUNDS: usize = 3000;
    within_for(Duration::from_secs(120), || {
        let mut lost = 0;
        for _ in 0..ROUNDS {
            let event_loop = EventLoop::new();
            let (parent, resolver) = Promise::<u32>::pending();
            let ran = common::Counter::default();
            let counted = ran.clone();
            let child = parent.finally(move || counted.bump());
            let start = Arc::new(Barrier::new(2));
            let go = start.clone();
            let canceller = thread::spawn(move || {
                let here = EventLoop::new();
                go.wait();
                child.cancel();
                here.run().unwrap();
                child
            });
            start.wait();
            resolver.resolve(1);
            let child = canceller.join().unwrap();
            event_loop.run().unwrap();
            let _ = event_loop.block_on(child);
            event_loop.run().unwrap();
            if ran.get() != 1 {
                lost += 1;
            }
        }
        assert_eq!(lost, 0, "rounds whose `finally` never ran, of {ROUNDS}");
    });
}

/// Counts its drops; not `Send`, as a timer callback's captures may be.
struct Tally(Rc<Cell<u32>>);

impl Drop for Tally {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

thread_local! {
    /// Calls and drops of [`timer_ending`]'s callback on this thread.
    static ENDED: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

fn count_call() {
    ENDED.with(|ended| ended.set((ended.get().0 + 1, ended.get().1)));
}

/// Counts its drop in [`ENDED`]; zero-sized.
struct Ending;

impl Drop for Ending {
    fn drop(&mut self) {
        ENDED.with(|ended| ended.set((ended.get().0, ended.get().1 + 1)));
    }
}

/// Fits the timer's inline place in size (two words) but not in alignment.
#[repr(align(16))]
struct OverAligned(Ending, u64);

#[derive(Clone, Copy, Debug)]
enum End {
    Fired,
    Cleared,
    LoopDropped,
}

/// Sets a timer whose callback captures `size` bytes (with an [`Ending`]), ends
/// it as `end` says, and returns its (calls, drops).
fn timer_ending(size: usize, end: End) -> (u32, u32) {
    ENDED.with(|ended| ended.set((0, 0)));
    let event_loop = EventLoop::new();
    let delay = match end {
        End::Fired => Duration::ZERO,
        End::Cleared | End::LoopDropped => Duration::from_secs(3600),
    };
    let ending = Ending;
    let id = match size {
        // Zero-sized, then one and two words: inline.
        0 => set(delay, size, move || {
            let _ending = ending;
            count_call();
        }),
        8 => {
            let word = Rc::new(1u64);
            set(delay, size, move || {
                let _ending = &ending;
                assert_eq!(*word, 1);
                count_call();
            })
        }
        16 => {
            let words = (1u64, Rc::new(1u64));
            set(delay, size, move || {
                let _ending = &ending;
                assert_eq!(words.0 + *words.1, 2);
                count_call();
            })
        }
        // Too big: boxed.
        32 => {
            let padding = [1u64; 4];
            set(delay, size, move || {
                let _ending = &ending;
                assert_eq!(padding.iter().sum::<u64>(), 4);
                count_call();
            })
        }
        // Over-aligned (16 bytes, aligned to 16): boxed.
        _ => {
            let aligned = OverAligned(ending, 3);
            let f = move || {
                let whole = &aligned; // the whole value, not its fields apart
                assert_eq!(whole.1, 3);
                count_call();
            };
            assert_eq!(align_of_val(&f), 16);
            set(delay, 16, f)
        }
    };
    match end {
        End::Fired => event_loop.run().unwrap(),
        End::Cleared => {
            assert!(thenable::clear_timer(id));
            assert!(!thenable::clear_timer(id));
            event_loop.run().unwrap();
        }
        End::LoopDropped => {}
    }
    drop(event_loop);
    ENDED.with(Cell::get)
}

/// `set_timeout`, checking first that the callback is `size` bytes.
fn set<F: FnOnce() + 'static>(delay: Duration, size: usize, f: F) -> thenable::TimerId {
    assert_eq!(size_of::<F>(), size);
    thenable::set_timeout(delay, f)
}

#[test]
#[cfg(target_pointer_width = "64")]
fn a_timer_callback_of_any_shape_is_dropped_once_however_its_timer_ends() {
    within_for(Duration::from_secs(10), || {
        for size in [0, 8, 16, 32, 1] {
            for end in [End::Fired, End::Cleared, End::LoopDropped] {
                let calls = u32::from(matches!(end, End::Fired));
                assert_eq!(timer_ending(size, end), (calls, 1), "{size} {end:?}");
            }
        }
    });
}

/// Runs `on_drop` when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

#[test]
fn a_cleared_timer_callback_is_dropped_outside_the_timer_table() {
    within_for(Duration::from_secs(10), || {
        let event_loop = EventLoop::new();
        let ran = Rc::new(Cell::new(0));
        // Its drop sets another timer and clears a third: the table must not be
        // borrowed while a cleared callback's captures are dropped.
        let other = thenable::set_timeout(Duration::from_secs(3600), || unreachable!());
        let (count, later) = (ran.clone(), ran.clone());
        let reentrant = OnDrop(move || {
            assert!(thenable::clear_timer(other));
            let later = later.clone();
            thenable::set_timeout(Duration::ZERO, move || later.set(later.get() + 10));
        });
        let id = thenable::set_timeout(Duration::from_secs(3600), move || {
            let _reentrant = &reentrant;
            count.set(count.get() + 1);
        });
        assert!(thenable::clear_timer(id));
        event_loop.run().unwrap();
        assert_eq!(ran.get(), 10, "only the timer set from the drop ran");
    });
}

#[test]
fn a_timer_callback_whose_capture_panics_when_dropped_drops_its_other_captures_once() {
    within_for(Duration::from_secs(10), || {
        let event_loop = EventLoop::new();
        let drops = Rc::new(Cell::new(0));
        let panicky = OnDrop(|| panic!("{MARK} a capture's drop failed"));
        let tally = Tally(drops.clone());
        let id = thenable::set_timeout(Duration::from_secs(3600), move || {
            let _both = (&panicky, &tally);
        });
        let cleared = catch_unwind(AssertUnwindSafe(|| thenable::clear_timer(id)));
        assert!(cleared.is_err(), "the drop's panic reaches the caller");
        assert_eq!(drops.get(), 1);
        // The table is whole: the id is gone, and the loop still runs timers.
        assert!(!thenable::clear_timer(id));
        let fired = Rc::new(Cell::new(false));
        let set = fired.clone();
        thenable::set_timeout(Duration::ZERO, move || set.set(true));
        event_loop.run().unwrap();
        assert!(fired.get());
        assert_eq!(drops.get(), 1);
    });
}

/// The waker a task is polled with borrows the reference the poll holds: it must
/// stay good for the whole poll however the poll goes (the task cancelled by its
/// own future, which takes it out of the table; a panic; a clone woken by
/// value), and the clones the future keeps must outlive the task and wake
/// nothing once it is gone. (Under AddressSanitizer, a waker that outlived the
/// task's last reference is a use after free here.)
#[test]
fn a_task_s_waker_stays_good_through_its_poll_and_its_clones_outlive_the_task() {
    use std::cell::RefCell;
    within_for(Duration::from_secs(10), || {
        let event_loop = EventLoop::new();
        let kept: Rc<RefCell<Vec<Waker>>> = Rc::default();
        let own: Rc<RefCell<Option<Promise<()>>>> = Rc::default();
        let (polls, drops) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let cancels_itself = {
            let (own, kept, polls) = (own.clone(), kept.clone(), polls.clone());
            let tally = Tally(drops.clone());
            thenable::spawn_local(std::future::poll_fn(move |cx| {
                let _tally = &tally;
                polls.set(polls.get() + 1);
                assert!(own.borrow().as_ref().expect("set").cancel());
                // Out of the table: only the poll's own reference is left.
                let clone = cx.waker().clone();
                assert!(clone.will_wake(cx.waker()));
                cx.waker().wake_by_ref();
                let by_value = clone.clone();
                by_value.wake(); // hands its own count to the queue
                kept.borrow_mut().push(clone);
                Poll::<Result<(), thenable::Error>>::Pending
            }))
        };
        *own.borrow_mut() = Some(cancels_itself);
        let panics = {
            let kept = kept.clone();
            thenable::spawn_local(std::future::poll_fn(move |cx| {
                kept.borrow_mut().push(cx.waker().clone());
                cx.waker().wake_by_ref();
                if kept.borrow().len() < 4 {
                    return Poll::<Result<(), thenable::Error>>::Pending;
                }
                panic!("{MARK} a task's future failed");
            }))
        };
        let mut woken = 0;
        let wakes_itself_by_value = thenable::spawn_local(std::future::poll_fn(move |cx| {
            woken += 1;
            if woken < 3 {
                let by_value = cx.waker().clone();
                by_value.wake();
                return Poll::Pending;
            }
            Poll::Ready(Ok::<_, thenable::Error>(woken))
        }));
        event_loop.run().unwrap();
        assert_eq!((polls.get(), drops.get()), (1, 1));
        let cancelled = own.borrow_mut().take().expect("set");
        assert!(event_loop.block_on(cancelled).unwrap_err().is_cancelled());
        assert!(event_loop.block_on(panics).unwrap_err().is_panic());
        assert_eq!(event_loop.block_on(wakes_itself_by_value).unwrap(), 3);
        let kept = kept.take();
        assert_eq!(kept.len(), 4);
        for waker in kept {
            waker.wake_by_ref();
            waker.wake();
        }
        event_loop.run().unwrap();
        assert_eq!((polls.get(), drops.get()), (1, 1));
    });
}
