//! # thenable
//!
//! JavaScript-style promises for Rust, on a single-threaded callback event loop in
//! the spirit of Node.js and asyncio, and two-way interoperable with Rust futures.
//!
//! ```
//! use std::time::Duration;
//! use thenable::{sleep, spawn, Promise};
//!
//! // A promise chain...
//! let chain = Promise::<i32>::resolved(1)
//!     .then(|v| Ok(v + 1))
//!     .then(|v| sleep(Duration::from_millis(1)).map(move |()| v * 10));
//!
//! // ...awaited in an async task, whose promise is chained again.
//! let task = spawn(async move { Ok::<_, thenable::Error>(chain.await? + 2) })
//!     .map(|v| format!("got {v}"));
//!
//! assert_eq!(thenable::block_on(task).unwrap(), "got 22");
//! ```
//!
//! The pieces, all at the crate's root unless named otherwise:
//!
//! - [`Promise`] and [`Resolver`]: `then`, `catch`, `finally`, `map`, cancellation;
//!   every `Promise` is a `Future`, and [`spawn`] makes a `Promise` of a future;
//! - the loop: [`EventLoop`], its cross-thread [`LoopHandle`], and the free
//!   functions that act on the current thread's loop ([`block_on`], [`spawn`],
//!   [`spawn_local`], [`queue_microtask`], [`set_immediate`], [`set_timeout`],
//!   [`set_interval`], [`clear_timer`] with its [`TimerId`], [`sleep`],
//!   [`set_unhandled_rejection_hook`]);
//! - combinators: [`all`], [`all_settled`], [`race`], [`any`], [`as_completed`],
//!   [`shield`], [`timeout`](Promise::timeout), [`delay`], [`interval`],
//!   [`map_concurrent`], [`map_series`], [`retry`], [`scope`];
//! - I/O on the loop: module [`io`] (readiness, [`io::Async`], [`io::stdin_lines`]),
//!   module [`net`] (TCP and UDP), and [`spawn_blocking`] for blocking work;
//! - [`Error`], the library's own failures (panic, cancelled, timed out, broken,
//!   deadlock), which every error type `E: From<Error>` can take.
//!
//! # What blocks, what panics
//!
//! Only [`block_on`] and [`EventLoop::run`] wait: they run the loop on the calling
//! thread until their future completes (or the loop has nothing left). Everything
//! else returns at once, and handlers, tasks and callbacks all run on that one
//! thread, so one that blocks (a `std::thread::sleep`, blocking I/O, a long
//! computation) stalls all the others: give such work to [`spawn_blocking`].
//! (`TcpListener::bind` and `UdpSocket::bind` resolve a host name on the calling
//! thread; `TcpStream::connect` resolves on a helper thread.)
//!
//! A panic in your code does not take the loop down: in a handler, an executor, a
//! task or a `spawn_blocking` job it rejects the promise with an error for which
//! [`Error::is_panic`] holds; in a raw callback ([`set_timeout`],
//! [`queue_microtask`], [`LoopHandle::post`], ...) it is reported on stderr and the
//! loop goes on. The library itself panics when the operating system refuses it a
//! poller or a thread (see [`EventLoop::new`]), and on a [`Promise`] used after it
//! was awaited to completion through a reference.
//!
//! `docs/design.md` in the repository explains how they fit, `docs/combinators.md`
//! and `docs/from-javascript.md` compare them with JavaScript and asyncio.

#![deny(missing_docs)]
#![deny(unsafe_code)] // exceptions: `reactor` (registration, a borrowed descriptor), `timer` (`OnceFn`, a prefetch), `promise::core::Core`'s lock, `task::TaskLink`'s pointer and the waker `event_loop::local` polls a task with, each with its SAFETY argument

mod blocking;
mod combinators;
mod error;
mod event_loop;
#[cfg(unix)]
pub mod io;
#[cfg(unix)]
pub mod net;
mod promise;
mod reactor;
mod task;
mod timer;

pub use crate::blocking::*;
pub use crate::combinators::*;
pub use crate::error::Error;
pub use crate::event_loop::{
    block_on, clear_timer, queue_microtask, reset_unhandled_rejection_hook, set_immediate,
    set_interval, set_timeout, set_unhandled_rejection_hook, sleep, spawn, spawn_local, EventLoop,
    LoopHandle,
};
pub use crate::promise::{IntoPromise, Promise, Resolver};
pub use crate::timer::TimerId;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme_examples {}

#[cfg(doctest)]
#[doc = include_str!("../docs/from-javascript.md")]
mod from_javascript_examples {}

#[cfg(doctest)]
#[doc = include_str!("../docs/combinators.md")]
mod combinators_examples {}
