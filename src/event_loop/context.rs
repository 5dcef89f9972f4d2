//! Per-thread context: which loop runs on this thread, which loop free functions
//! use when none runs, which task is being polled, and where queued work goes.
//!
//! Everything that schedules work (a settling promise, a waking task) calls
//! [`schedule`] or [`schedule_task`]; the decision of *which* loop takes the work is
//! made here and nowhere else.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use super::{contained, orphans, EventLoop, Job, Local, SendJob, Shared};
use crate::promise::core::{self, Graph, Runnable};
use crate::task::TaskWaker;

/// What `set_unhandled_rejection_hook` installs.
pub(crate) type UnhandledHook = Rc<dyn Fn(&crate::Error)>;

/// A loop as seen from any thread.
pub(crate) type LoopRef = Arc<Shared>;

struct Context {
    /// The loop running on this thread (inside `run`, `block_on`, or a `Promise`
    /// poll that drives it).
    running: RefCell<Option<Rc<Local>>>,
    /// Loops created on this thread, most recent last: the newest live one is
    /// where free functions go when no loop runs.
    created: RefCell<Vec<Weak<Local>>>,
    /// While a loop is being torn down, work it would queue lands here and is
    /// abandoned, iteratively (see [`with_graveyard`]).
    graveyard: RefCell<Option<Vec<Arc<dyn Runnable>>>>,
    /// The task being polled on this thread.
    task: RefCell<Option<Arc<TaskWaker>>>,
    /// Where unhandled rejections go (`None`: stderr).
    unhandled_hook: RefCell<Option<UnhandledHook>>,
}

impl Context {
    /// Const, so that each access to [`CONTEXT`] skips the lazy-initialization
    /// check: `schedule` reaches it for every reaction.
    const fn new() -> Context {
        Context {
            running: RefCell::new(None),
            created: RefCell::new(Vec::new()),
            graveyard: RefCell::new(None),
            task: RefCell::new(None),
            unhandled_hook: RefCell::new(None),
        }
    }
}

/// A task to drop, with the loop it belongs to.
type CancelledTask = (Rc<Local>, Arc<TaskWaker>);

thread_local! {
    /// Tasks to drop, found while dropping a cancelled task (see [`cancel_task`]).
    static CANCELLED_TASKS: RefCell<Option<Vec<CancelledTask>>> = const { RefCell::new(None) };
    static CONTEXT: Context = const { Context::new() };
    /// This thread's default loop, created the first time nothing else is there.
    /// Kept apart from `CONTEXT` and first touched after it, so that at thread exit
    /// it is destroyed while `CONTEXT` (which its teardown uses) still exists.
    static DEFAULT: RefCell<Option<EventLoop>> = const { RefCell::new(None) };
    /// The loop of what runs after the default loop's teardown began, at the
    /// thread's end (see [`teardown_loop`]).
    static TEARDOWN: RefCell<Option<EventLoop>> = const { RefCell::new(None) };
}

/// Where a reaction goes (see [`schedule`]).
enum Target {
    /// A queue of this thread's loops.
    Local(Rc<Local>),
    /// The home loop belongs to another thread.
    Elsewhere,
    /// Nobody drives the loop it would go to: whoever waits next runs it.
    Orphan,
    /// A loop is being torn down on this thread: abandoned with it.
    Grave,
}

/// The one place that decides where a reaction runs.
///
/// - With a loop running on this thread, there, unless the reaction's home loop
///   belongs to another thread and is still there (then that loop's injector, or
///   the orphans).
/// - With none running: the home loop if it is one of this thread's own
///   `EventLoop`s, or, for a reaction with no home (or one whose home is gone), the
///   newest of them (it will run when that loop runs). Work bound for this
///   thread's *default* loop, which only runs while something on this thread waits
///   on a thenable promise, becomes an orphan instead: then a promise built here
///   and awaited on another thread (a tokio worker, say) is not stuck in a queue
///   nobody here will run.
fn target(cx: &Context, home: Option<&LoopRef>) -> Target {
    // A reaction homed on a loop still there is that loop's work, not the
    // teardown's, even when the teardown settles it (a resolver held by a task of
    // the loop being dropped breaks): its handler runs there, as it would had the
    // resolver been dropped anywhere else. Queued, not run: it costs no stack.
    if cx.graveyard.borrow().is_some() && home.is_none_or(|home| home.is_closed()) {
        return Target::Grave;
    }
    if let Some(running) = cx.running.borrow().clone() {
        return match home {
            None => Target::Local(running),
            Some(home)
                if Arc::ptr_eq(home, &running.shared) || created_loop(cx, home.id).is_some() =>
            {
                Target::Local(running)
            }
            // A home that is gone takes no work: settled here, its promise's
            // reactions are this loop's, in this loop's order, as a promise
            // without a home's are.
            Some(home) if home.is_closed() => Target::Local(running),
            Some(_) => Target::Elsewhere,
        };
    }
    let local = match home {
        Some(home) if !home.is_closed() => match created_loop(cx, home.id) {
            Some(local) => local,
            None => return Target::Elsewhere,
        },
        // A home that is gone takes no work here either: the reactions go where
        // a promise without a home's go, in that loop's order.
        _ => match newest_created(cx) {
            Some(local) => local,
            None => return Target::Orphan,
        },
    };
    if is_default(&local) {
        Target::Orphan
    } else {
        Target::Local(local)
    }
}

/// The most recently created live loop of this thread.
fn newest_created(cx: &Context) -> Option<Rc<Local>> {
    let mut created = cx.created.borrow_mut();
    while let Some(last) = created.last() {
        match last.upgrade() {
            Some(local) => return Some(local),
            None => {
                created.pop();
            }
        }
    }
    None
}

/// True if `local` is this thread's default loop.
fn is_default(local: &Rc<Local>) -> bool {
    local.is_default.get()
}

/// Queues a promise reaction where [`target`] says.
///
/// A promise settled by a `Resolver` has a `home` loop (where the resolver was
/// made); its reactions go there through its injector if another thread drives
/// it, and as orphans (run by whichever loop or foreign poll waits next) if nobody
/// drives it. Other reactions go to the loop running on this thread, or else to
/// this thread's newest loop.
pub(crate) fn schedule(job: Arc<dyn Runnable>, home: Option<&LoopRef>) {
    let Some(job) = push_on_running(job, home) else {
        return;
    };
    let mut job = Some(job);
    let decided = CONTEXT.try_with(|cx| {
        let target = target(cx, home);
        if let Target::Grave = target {
            if let Some(grave) = cx.graveyard.borrow_mut().as_mut() {
                grave.extend(job.take());
            }
        }
        target
    });
    let Some(job) = job else { return };
    match decided {
        Ok(Target::Local(local)) => local.push(Job::Run(job)),
        Ok(Target::Grave) => job.abandon(),
        Ok(Target::Orphan) => orphan(job, home),
        Ok(Target::Elsewhere) => send_elsewhere(job, home),
        // The thread is exiting (a resolver settled or dropped by a thread-local's
        // destructor): none of its loops will run this, but the home loop of a
        // resolver's promise lives on another thread, or is nobody's to run.
        Err(_) if home.is_some() => send_elsewhere(job, home),
        // In a thread-local's destructor, a panic would abort the process.
        Err(_) => contained("an abandoned reaction", || job.abandon()),
    }
}

/// Queues a reaction whose home loop is not one of this thread's: on that loop if
/// a thread drives it, else as an orphan.
///
/// A home loop that is gone (dropped, or a thread's default loop gone with its
/// thread) abandoned what was queued in it when it went; a reaction that comes
/// later was never its work. Its promise outlived it, and is awaited or chained
/// elsewhere: an `await` gets the outcome wherever it waits, so a `then` does
/// too, as an orphan run by whichever loop waits next.
fn send_elsewhere(job: Arc<dyn Runnable>, home: Option<&LoopRef>) {
    match home {
        Some(home) if home.is_closed() => orphans::push(job, None),
        // Refused, it goes to the orphans all the same (see `Shared::inject`).
        Some(home) if home.is_driven() => {
            home.inject(SendJob::Run(job));
        }
        _ => orphan(job, home),
    }
}

/// Hands a reaction nobody drives its loop for to the orphans: through its
/// home, if it has one, after the reactions its injector still holds (see
/// `Shared::orphan`).
fn orphan(job: Arc<dyn Runnable>, home: Option<&LoopRef>) {
    match home {
        Some(home) => home.orphan(job),
        None => orphans::push(job, None),
    }
}

/// Queues `job` on the loop running on this thread if that is where [`target`]
/// sends it at once (no loop is being torn down, and `home` is none or that
/// loop): the usual case, here without `target`'s reference count. Gives the job
/// back otherwise.
fn push_on_running(job: Arc<dyn Runnable>, home: Option<&LoopRef>) -> Option<Arc<dyn Runnable>> {
    let mut job = Some(job);
    let _ = CONTEXT.try_with(|cx| {
        if cx.graveyard.borrow().is_some() {
            return;
        }
        if let Some(running) = cx.running.borrow().as_ref() {
            if home.is_none_or(|home| Arc::ptr_eq(home, &running.shared)) {
                running.push(Job::Run(job.take().expect("taken once")));
            }
        }
    });
    job
}

/// The queue of this thread that [`schedule`] would put reactions homed on `home`
/// on, if it is one of this thread's loops: reactions can then be pushed there
/// directly, many at a time.
pub(crate) fn local_queue(home: Option<&LoopRef>) -> Option<Rc<Local>> {
    match CONTEXT.try_with(|cx| target(cx, home)) {
        Ok(Target::Local(local)) => Some(local),
        _ => None,
    }
}

/// Registers a promise rejected with nobody watching: if nobody consumes it by the
/// end of the current microtask drain, it is reported (see `Local::drain_micro`).
pub(crate) fn track_unhandled(node: Arc<dyn Graph>) {
    let local = CONTEXT.try_with(|cx| {
        if cx.graveyard.borrow().is_some() {
            return None;
        }
        let running = cx.running.borrow().clone();
        let created = cx.created.borrow();
        Some(running.or_else(|| created.iter().rev().find_map(Weak::upgrade)))
    });
    match local {
        Ok(Some(Some(local))) => local.track_unhandled(node),
        // No loop on this thread yet: the one free functions (`block_on`) will
        // drive, made now if need be, as `Promise::pending` does for its home.
        Ok(Some(None)) => {
            let local = DEFAULT.try_with(|default| default_loop(&mut default.borrow_mut()));
            if let Ok(local) = local {
                local.track_unhandled(node)
            }
        }
        // A loop's teardown is under way: its rejections are nobody's to handle
        // (tracked on the default loop, its next drain or its drop would report
        // them). Or the thread is exiting.
        Ok(None) | Err(_) => {}
    }
}

/// Reports an unhandled rejection through this thread's hook, or on stderr.
pub(crate) fn report_unhandled(error: &crate::Error) {
    let hook = CONTEXT
        .try_with(|cx| cx.unhandled_hook.borrow().clone())
        .ok()
        .flatten();
    match hook {
        // A hook that panics is reported as any callback of the loop is: unwound,
        // it would leave `run` (or `block_on`, or a foreign executor's poll) and
        // drop the other rejections of the drain unreported.
        Some(hook) => contained("the unhandled-rejection hook", || hook(error)),
        // `eprintln!` panics if stderr fails; this also runs in a loop's drop,
        // at thread exit among others, where an unwinding panic aborts.
        None => contained("the unhandled-rejection report", || {
            eprintln!("thenable: unhandled rejection: {error}")
        }),
    }
}

/// Replaces this thread's unhandled-rejection hook (`None`: the default, one line
/// on stderr).
pub(crate) fn set_unhandled_hook(hook: Option<UnhandledHook>) {
    CONTEXT.with(|cx| *cx.unhandled_hook.borrow_mut() = hook);
}

/// Queues a task to be polled on its own loop.
pub(crate) fn schedule_task(task: Arc<TaskWaker>) {
    let local = CONTEXT
        .try_with(|cx| {
            let running = cx.running.borrow();
            running
                .as_ref()
                .filter(|local| Arc::ptr_eq(&local.shared, &task.home))
                .cloned()
        })
        .ok()
        .flatten();
    match local {
        Some(local) => local.push(Job::Poll(task)),
        None => {
            let home = task.home.clone();
            home.inject(SendJob::Poll(task));
        }
    }
}

/// Drops a task's future because its promise was cancelled, on the task's loop.
///
/// On the loop's own thread this happens before `cancel` returns, so a task that
/// was already queued to run never takes another step (it would otherwise run up
/// to its next `await`, and an I/O operation would consume data nobody takes).
/// Futures dropped meanwhile may cancel further tasks: those are dropped by the
/// same call, one after another from a work list, so a deep chain of tasks costs
/// no stack. From another thread, the loop is asked to do it.
pub(crate) fn cancel_task(task: &std::sync::Weak<TaskWaker>) {
    let Some(task) = task.upgrade() else { return };
    let Some(local) = local_loop(task.home.id) else {
        let home = task.home.clone();
        home.inject(SendJob::Call(Box::new(move || {
            with_current(|local| local.cancel_task(&task));
        })));
        return;
    };
    core::run_flat(&CANCELLED_TASKS, (local, task), |(local, task)| {
        // A destructor that panics must not unwind into the caller of `cancel`.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| local.cancel_task(&task))) {
            super::report_panic("a cancelled task's destructor", &*payload);
        }
    });
}

/// This thread's loop whose id is `id`, running or not.
pub(crate) fn local_loop(id: u64) -> Option<Rc<Local>> {
    CONTEXT.try_with(|cx| created_loop(cx, id)).ok().flatten()
}

/// The live loop of this thread whose id is `id` (loop ids are never reused, and
/// every loop, running or not, is in `created` from the moment it is made).
fn created_loop(cx: &Context, id: u64) -> Option<Rc<Local>> {
    cx.created
        .borrow()
        .iter()
        .filter_map(Weak::upgrade)
        .find(|local| local.shared.id == id)
}

/// Runs `f` with the loop running on this thread, if any.
pub(crate) fn with_running<R>(f: impl FnOnce(&Rc<Local>) -> R) -> Option<R> {
    CONTEXT
        .try_with(|cx| cx.running.borrow().as_ref().map(f))
        .ok()
        .flatten()
}

/// Runs `f` with the loop running on this thread, or else the ambient one: the
/// most recently created live `EventLoop` of this thread, or its default loop.
pub(crate) fn with_current<R>(f: impl FnOnce(&Rc<Local>) -> R) -> R {
    let local = with_running(Rc::clone).unwrap_or_else(ambient);
    f(&local)
}

/// [`with_current`], telling `f` also whether the loop is this thread's default
/// loop while no loop runs here: one that runs only while something on this
/// thread waits on a promise, and may never run again (see `claims`).
#[inline]
pub(crate) fn with_current_or_undriven_default<R>(f: impl FnOnce(&Rc<Local>, bool) -> R) -> R {
    // One call of `f`, which is then inlined as `with_current`'s is.
    let (local, undriven_default) = match with_running(Rc::clone) {
        Some(running) => (running, false),
        None => {
            let local = ambient();
            let undriven_default = is_default(&local);
            (local, undriven_default)
        }
    };
    f(&local, undriven_default)
}

/// The loop free functions use when no loop runs on this thread.
pub(crate) fn ambient() -> Rc<Local> {
    let newest = CONTEXT.try_with(newest_created).ok().flatten();
    newest.unwrap_or_else(|| {
        DEFAULT
            .try_with(|default| default_loop(&mut default.borrow_mut()))
            .unwrap_or_else(|_| teardown_loop())
    })
}

/// The loop free functions use once the thread's default loop is being torn
/// down at the thread's end, or is gone: a destructor run by that teardown
/// calls `spawn` or `block_on`, as a guard that cleans up might, and finds no
/// loop (the thread-local holding the default loop can no longer be reached).
/// [`TEARDOWN`]'s, made on first use: first touched after the default loop's
/// thread-local was destroyed, it is destroyed in its turn, while [`CONTEXT`]
/// still exists, so what nobody waited for goes with it, as a dropped loop's
/// work does. A loop of its own for each call once that one is being torn down
/// too (its work then goes at once).
fn teardown_loop() -> Rc<Local> {
    TEARDOWN
        .try_with(|teardown| {
            let mut teardown = teardown.borrow_mut();
            teardown.get_or_insert_with(EventLoop::new).local.clone()
        })
        .unwrap_or_else(|_| EventLoop::new().local)
}

/// This thread's default loop, made now if need be.
fn default_loop(default: &mut Option<EventLoop>) -> Rc<Local> {
    let default = default.get_or_insert_with(|| {
        let made = EventLoop::new();
        made.local.is_default.set(true);
        made
    });
    default.local.clone()
}

pub(crate) fn register_created(local: &Rc<Local>) {
    let _ = CONTEXT.try_with(|cx| {
        let mut created = cx.created.borrow_mut();
        // `newest_created` drops only the gone loops at the end of the list, and
        // only when asked, which a thread running each job on a loop of its own
        // (`EventLoop::new().block_on(..)`) never is: each would keep its `Weak`
        // (and so the loop's allocation) for ever, and every search would grow.
        created.retain(|weak| weak.strong_count() > 0);
        created.push(Rc::downgrade(local));
    });
}

/// Marks `local` as the loop running on this thread for the duration of `f`;
/// `Err(())` if a loop is already running here.
pub(crate) fn enter<R>(local: &Rc<Local>, f: impl FnOnce() -> R) -> Result<R, ()> {
    // A loop run by a destructor that another loop's teardown runs (a value whose
    // `drop` calls `block_on`) is a loop like any other: its reactions are queued,
    // not buried with the loop being torn down (they would never wake it, and it
    // would wait for ever). What was buried so far is put back when it returns.
    let buried = CONTEXT.with(|cx| {
        let mut running = cx.running.borrow_mut();
        if running.is_some() {
            return Err(());
        }
        *running = Some(local.clone());
        local.shared.set_driven(true);
        Ok(cx.graveyard.borrow_mut().take())
    })?;
    if local.shared.is_kept_alive() {
        // Its resolvers no longer count as undriven for other loops' `block_on`:
        // one that waits only for them must re-check.
        orphans::notify_driven_loops();
    }
    struct Exit(Option<Vec<Arc<dyn Runnable>>>);
    impl Drop for Exit {
        fn drop(&mut self) {
            let left = CONTEXT.try_with(|cx| {
                let left = cx.running.borrow_mut().take();
                if let Some(buried) = self.0.take() {
                    *cx.graveyard.borrow_mut() = Some(buried);
                }
                left
            });
            if let Ok(Some(local)) = left {
                local.shared.set_driven(false);
                // Outside the context's borrows: handing them over wakes
                // other executors' wakers, which may call back in.
                local.shared.orphan_injected_reactions();
            }
        }
    }
    let _exit = Exit(buried);
    Ok(f())
}

/// True if a loop runs on this thread.
pub(crate) fn is_running() -> bool {
    with_running(|_| ()).is_some()
}

/// Runs `f`; any reaction scheduled meanwhile (on this thread) is abandoned instead
/// of queued, and so is everything abandoning it leads to, one at a time, so that a
/// long chain never recurses.
pub(crate) fn with_graveyard(f: impl FnOnce()) {
    let outermost = CONTEXT
        .try_with(|cx| {
            let mut grave = cx.graveyard.borrow_mut();
            let outermost = grave.is_none();
            if outermost {
                *grave = Some(Vec::new());
            }
            outermost
        })
        .unwrap_or(false);
    if !outermost {
        f();
        return;
    }
    /// Leaves the graveyard even if something unwinds: left open, every later
    /// reaction on this thread would be buried instead of run.
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            let _ = CONTEXT.try_with(|cx| cx.graveyard.borrow_mut().take());
        }
    }
    let _close = Close;
    f();
    loop {
        let next = CONTEXT.with(|cx| cx.graveyard.borrow_mut().as_mut().and_then(Vec::pop));
        match next {
            Some(job) => contained("an abandoned reaction", || job.abandon()),
            None => break,
        }
    }
}

/// Sets `task` as the task being polled for the duration of `f`, and hands it
/// back: moved in and out, it costs no reference count.
pub(crate) fn polling_task<R>(task: Arc<TaskWaker>, f: impl FnOnce() -> R) -> (R, Arc<TaskWaker>) {
    let previous = CONTEXT.with(|cx| cx.task.borrow_mut().replace(task));
    /// Puts the previous task back, even if `f` unwinds.
    struct Restore(Option<Option<Arc<TaskWaker>>>);
    impl Restore {
        fn restore(&mut self) -> Option<Arc<TaskWaker>> {
            let previous = self.0.take()?;
            CONTEXT
                .try_with(|cx| std::mem::replace(&mut *cx.task.borrow_mut(), previous))
                .ok()
                .flatten()
        }
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            self.restore();
        }
    }
    let mut restore = Restore(Some(previous));
    let result = f();
    let task = restore
        .restore()
        .expect("the task stays current until restored");
    (result, task)
}

/// Whether `waker` is the waker of the task being polled on this thread.
pub(crate) fn is_polled_task(waker: &std::task::Waker) -> bool {
    // A std `Wake` waker's data pointer is the `Arc`'s pointer: identity only.
    with_polled_task(|task| waker.data() == Arc::as_ptr(task).cast::<()>()).unwrap_or(false)
}

/// Runs `f` on the task being polled on this thread, if any, through a borrow:
/// a poll that finds its promise settled takes no count of the task.
pub(crate) fn with_polled_task<R>(f: impl FnOnce(&Arc<TaskWaker>) -> R) -> Option<R> {
    CONTEXT
        .try_with(|cx| cx.task.borrow().as_ref().map(f))
        .ok()
        .flatten()
}

/// Whether a job queued for the chain of a wait of loop `here`, which has run out
/// of work, is known to be on another thread's loop (the `idle` of
/// [`core::settled_by_another_loop`]).
///
/// A job queued on another loop of this thread would never run while `here`
/// waits: if one of them has work queued, a queued job is not known to be
/// another thread's, and counts as `here`'s own (as when the wait registered).
pub(crate) fn others_idle(here: u64) -> bool {
    CONTEXT
        .try_with(|cx| {
            !cx.created
                .borrow()
                .iter()
                .filter_map(Weak::upgrade)
                .any(|local| local.shared.id != here && local.has_ready_work())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::CONTEXT;
    use crate::{Error, EventLoop};

    #[test]
    fn loops_made_and_dropped_one_after_another_are_not_remembered() {
        // A thread that runs each job on a fresh loop (`EventLoop::new().block_on`)
        // never asks for its newest loop outside them: the list of its loops must
        // still not keep one entry (and the freed loop's allocation) per loop made.
        std::thread::spawn(|| {
            let older = EventLoop::new();
            for n in 0..100 {
                let out = EventLoop::new().block_on(async move { Ok::<_, Error>(n) });
                assert_eq!(out.unwrap(), n);
            }
            let remembered = CONTEXT.with(|cx| cx.created.borrow().len());
            assert!(remembered <= 2, "{remembered} loops remembered, 1 alive");
            drop(older);
        })
        .join()
        .unwrap();
    }
}
