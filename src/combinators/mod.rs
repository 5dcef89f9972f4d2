//! Combinators: promises made from other promises (all, race, any, as-completed,
//! timeouts, concurrency limits, scopes).
//!
//! Everything here is built on the public promise API plus cancellation; nothing
//! here touches a loop's queues or a promise's state directly. Results always come
//! back in input order unless the name says otherwise (`as_completed`).

mod as_completed;
mod collect;
mod shield;
pub use self::as_completed::*;
pub use self::collect::*;
pub use self::shield::*;
mod concurrency;
mod scope;
mod time;
pub use self::concurrency::*;
pub use self::scope::*;
pub use self::time::*;
