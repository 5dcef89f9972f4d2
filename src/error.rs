//! The library's error type.
//!
//! [`Error`] owns every failure thenable itself can produce (a panic, a broken
//! promise, a deadlock, a chaining cycle, ...) and can carry any user error too.
//! It must stay cheap to clone (one `Arc`) and `Send + Sync`, because a rejected
//! promise hands a copy to every consumer. It never decides *when* something fails:
//! that belongs to the promise, loop and task modules.

use std::any::Any;
use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The default error type of a [`Promise`](crate::Promise).
///
/// An `Error` is either a message, a wrapped [`std::error::Error`], or one of the
/// failures the library reports itself; the `is_*` methods tell which. It is an
/// `Arc` inside, so cloning it is cheap, and it is `Send + Sync`.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it with `?` or
/// `.into()`, and [`downcast_ref`](Error::downcast_ref) gets it back.
///
/// ```
/// use thenable::Error;
///
/// let err: Error = std::io::Error::new(std::io::ErrorKind::Other, "disk on fire").into();
/// assert_eq!(err.to_string(), "disk on fire");
/// assert!(err.downcast_ref::<std::io::Error>().is_some());
/// assert!(!err.is_panic());
/// ```
///
/// # Telling failures apart
///
/// | test | the library's failure |
/// |---|---|
/// | [`is_panic`](Error::is_panic) | a handler, executor, task, [`spawn_blocking`](crate::spawn_blocking) job or `finally` callback panicked (the message is kept) |
/// | [`is_cancelled`](Error::is_cancelled) | an `await` of a cancelled promise ([`Promise::cancel`](crate::Promise::cancel)); a combinator's input cancelled elsewhere |
/// | [`is_timeout`](Error::is_timeout) | [`Promise::timeout`](crate::Promise::timeout) or [`timeout_at`](crate::Promise::timeout_at) ran out |
/// | [`is_broken`](Error::is_broken) | every [`Resolver`](crate::Resolver) dropped unsettled; the loop holding the work dropped (a thread's default loop, at the thread's end) |
/// | [`is_deadlock`](Error::is_deadlock) | `block_on` on what nothing left can complete; `block_on` or `run` called inside a running loop; a chaining cycle |
/// | [`is_aggregate`](Error::is_aggregate) | [`any`](crate::any) with every input rejected: the reasons are in [`errors`](Error::errors) |
///
/// Anything else is a message ([`Error::msg`]) or a wrapped error, which
/// [`downcast_ref`](Error::downcast_ref) gets back: the I/O of [`net`](crate::net)
/// rejects with a wrapped `std::io::Error`, whose kind says what went wrong.
///
/// A promise with an error type of your own receives these failures through its
/// `E: From<Error>`. The conversions this crate provides keep what they can:
/// `String` the message; `std::io::Error` the message and a kind (`TimedOut` for a
/// timeout, `Interrupted` for a cancellation, `BrokenPipe` for a broken promise,
/// `WouldBlock` for a deadlock, a wrapped `io::Error`'s own kind, `Other`
/// otherwise); `Box<dyn std::error::Error + Send + Sync>` the message and the
/// wrapped error's [`source`](std::error::Error::source) chain; and
/// [`Error::converted_into`] gives the `Error` back from either.
///
/// ```
/// use std::io::ErrorKind;
/// use std::time::Duration;
/// use thenable::{sleep, Promise};
///
/// let slow: Promise<(), std::io::Error> = sleep(Duration::from_secs(3600))
///     .map_err(Into::into)
///     .timeout(Duration::from_millis(1));
/// assert_eq!(thenable::block_on(slow).unwrap_err().kind(), ErrorKind::TimedOut);
/// ```
///
/// `Error` does not implement `std::error::Error` itself (nor does `anyhow`'s
/// error: it would collide with the blanket `From`); `?` turns it into a
/// `Box<dyn std::error::Error + Send + Sync>` or a `std::io::Error` where one is
/// wanted, such as the error of `main`.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: Kind,
    message: Cow<'static, str>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    errors: Vec<Error>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Other,
    Panic,
    Cancelled,
    Timeout,
    Broken,
    Deadlock,
    Aggregate,
}

impl Error {
    fn build(kind: Kind, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: None,
                errors: Vec::new(),
            }),
        }
    }

    /// An error that is just a message: the equivalent of JavaScript's
    /// `new Error("...")`.
    ///
    /// ```
    /// let err = thenable::Error::msg("no such user");
    /// assert_eq!(err.to_string(), "no such user");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Error {
        Error::build(Kind::Other, message.to_string())
    }

    /// Wraps any error; [`downcast_ref`](Error::downcast_ref) gets it back.
    ///
    /// ```
    /// use std::num::ParseIntError;
    /// let parse: ParseIntError = "x".parse::<i32>().unwrap_err();
    /// let err = thenable::Error::new(parse.clone());
    /// assert_eq!(err.downcast_ref::<ParseIntError>(), Some(&parse));
    /// ```
    pub fn new<E: StdError + Send + Sync + 'static>(error: E) -> Error {
        Error {
            inner: Arc::new(Inner {
                kind: Kind::Other,
                message: Cow::Owned(error.to_string()),
                source: Some(Box::new(error)),
                errors: Vec::new(),
            }),
        }
    }

    /// The error of a handler or future that panicked; the panic message is kept.
    /// The payload is dropped here; should its destructor panic too, that second
    /// panic is caught and its own payload leaked, so that this never unwinds.
    ///
    /// ```
    /// let payload = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
    /// let err = thenable::Error::panic(payload);
    /// assert!(err.is_panic());
    /// assert!(err.to_string().contains("boom"));
    /// ```
    pub fn panic(payload: Box<dyn Any + Send>) -> Error {
        let text = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_string()
        };
        if let Err(second) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
            // Dropping it could panic again.
            std::mem::forget(second);
        }
        Error::build(Kind::Panic, format!("panicked: {text}"))
    }

    /// The error of work that was cancelled.
    ///
    /// ```
    /// assert!(thenable::Error::cancelled().is_cancelled());
    /// ```
    pub fn cancelled() -> Error {
        Error::build(Kind::Cancelled, "cancelled")
    }

    /// The error of work that did not finish in time.
    ///
    /// ```
    /// assert!(thenable::Error::timed_out().is_timeout());
    /// ```
    pub fn timed_out() -> Error {
        Error::build(Kind::Timeout, "timed out")
    }

    /// The error of a promise that can never settle because every
    /// [`Resolver`](crate::Resolver) (or the task, or the loop that would have
    /// settled it) was dropped.
    ///
    /// ```
    /// assert!(thenable::Error::broken().is_broken());
    /// ```
    pub fn broken() -> Error {
        Error::build(
            Kind::Broken,
            "broken promise: whatever would have settled it was dropped",
        )
    }

    /// The error of waiting for something nothing left can complete (see
    /// [`block_on`](crate::block_on)), or of a promise resolved with a promise that
    /// waits on it.
    ///
    /// ```
    /// let err = thenable::Error::deadlock("the two tasks wait on each other");
    /// assert!(err.is_deadlock());
    /// ```
    pub fn deadlock(message: impl fmt::Display) -> Error {
        Error::build(Kind::Deadlock, format!("deadlock: {message}"))
    }

    /// Several errors as one, in the order given (as JavaScript's `AggregateError`).
    ///
    /// ```
    /// use thenable::Error;
    /// let err = Error::aggregate(vec![Error::msg("a"), Error::msg("b")]);
    /// assert!(err.is_aggregate());
    /// assert_eq!(err.errors().len(), 2);
    /// assert_eq!(Error::aggregate(vec![Error::msg("a")]).to_string(), "1 error: a");
    /// ```
    pub fn aggregate(errors: Vec<Error>) -> Error {
        let message = match errors.len() {
            1 => "1 error".to_string(),
            n => format!("{n} errors"),
        };
        Error {
            inner: Arc::new(Inner {
                kind: Kind::Aggregate,
                message: Cow::Owned(message),
                source: None,
                errors,
            }),
        }
    }

    /// True for the error of a panicking handler or future.
    ///
    /// ```
    /// assert!(!thenable::Error::msg("x").is_panic());
    /// ```
    pub fn is_panic(&self) -> bool {
        self.inner.kind == Kind::Panic
    }

    /// True for cancelled work.
    ///
    /// ```
    /// assert!(!thenable::Error::msg("x").is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.inner.kind == Kind::Cancelled
    }

    /// True for work that timed out.
    ///
    /// ```
    /// assert!(!thenable::Error::msg("x").is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// True for a broken promise (everything that could settle it was dropped).
    ///
    /// ```
    /// assert!(!thenable::Error::msg("x").is_broken());
    /// ```
    pub fn is_broken(&self) -> bool {
        self.inner.kind == Kind::Broken
    }

    /// True for a deadlock or a chaining cycle.
    ///
    /// ```
    /// assert!(!thenable::Error::msg("x").is_deadlock());
    /// ```
    pub fn is_deadlock(&self) -> bool {
        self.inner.kind == Kind::Deadlock
    }

    /// True for an aggregate of several errors.
    ///
    /// ```
    /// assert!(!thenable::Error::msg("x").is_aggregate());
    /// ```
    pub fn is_aggregate(&self) -> bool {
        self.inner.kind == Kind::Aggregate
    }

    /// The errors inside an aggregate, in order; empty for other errors.
    ///
    /// ```
    /// let err = thenable::Error::aggregate(vec![thenable::Error::msg("a")]);
    /// assert_eq!(err.errors()[0].to_string(), "a");
    /// ```
    pub fn errors(&self) -> &[Error] {
        &self.inner.errors
    }

    /// The wrapped error, if this error wraps one of type `E`.
    ///
    /// ```
    /// let err = thenable::Error::from(std::fmt::Error);
    /// assert!(err.downcast_ref::<std::fmt::Error>().is_some());
    /// assert!(err.downcast_ref::<std::io::Error>().is_none());
    /// ```
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.inner.source.as_deref()?.downcast_ref::<E>()
    }

    /// The wrapped error, if any, as a `std::error::Error`.
    ///
    /// ```
    /// let err = thenable::Error::from(std::fmt::Error);
    /// assert!(err.source().is_some());
    /// assert!(thenable::Error::msg("x").source().is_none());
    /// ```
    pub fn source(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }

    /// True when both values are the same error (clones of one another).
    ///
    /// ```
    /// let a = thenable::Error::msg("x");
    /// assert!(a.same_as(&a.clone()));
    /// assert!(!a.same_as(&thenable::Error::msg("x")));
    /// ```
    pub fn same_as(&self, other: &Error) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        if self.inner.kind == Kind::Aggregate {
            for (i, e) in self.inner.errors.iter().enumerate() {
                write!(f, "{}{}", if i == 0 { ": " } else { "; " }, e)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        if !self.inner.errors.is_empty() {
            d.field("errors", &self.inner.errors);
        }
        d.finish()
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for Error {
    fn from(error: E) -> Error {
        Error::new(error)
    }
}

/// `Error` does not implement `std::error::Error` itself (that would collide with
/// the blanket `From` above, as in `anyhow`); this view does, for APIs that want one.
struct StdView(Error);

impl fmt::Debug for StdView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StdView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error {
    /// The library's failure that `error` was converted from, if it was one:
    /// what the conversions into `Box<dyn std::error::Error + Send + Sync>` and
    /// into `std::io::Error` keep inside, for a promise with one of those error
    /// types to tell a cancellation, a timeout or a broken promise exactly (an
    /// `io::Error`'s kind is shared with real I/O errors: `Interrupted`,
    /// `TimedOut`, ...). `None` for any other error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use thenable::{sleep, Error, Promise};
    ///
    /// let slow: Promise<(), std::io::Error> = sleep(Duration::from_secs(3600))
    ///     .map_err(Into::into)
    ///     .timeout(Duration::from_millis(1));
    /// let failure = thenable::block_on(slow).unwrap_err();
    /// assert!(Error::converted_into(&failure).is_some_and(|e| e.is_timeout()));
    ///
    /// let real = std::io::Error::from(std::io::ErrorKind::TimedOut);
    /// assert!(Error::converted_into(&real).is_none());
    /// ```
    pub fn converted_into(error: &(dyn StdError + 'static)) -> Option<Error> {
        if let Some(view) = error.downcast_ref::<StdView>() {
            return Some(view.0.clone());
        }
        let io = error.downcast_ref::<std::io::Error>()?;
        io.get_ref()?
            .downcast_ref::<StdView>()
            .map(|view| view.0.clone())
    }
}

impl StdError for StdView {
    /// A wrapped error's message is this one's Display already: the chain goes on
    /// from the wrapped error's own source (as `#[error(transparent)]` does), or a
    /// report walking it would say the same thing twice.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.inner.source.as_deref()?.source()
    }
}

impl From<Error> for Box<dyn StdError + Send + Sync + 'static> {
    fn from(error: Error) -> Self {
        Box::new(StdView(error))
    }
}

/// Lets `Promise<T, String>` receive the library's failures as their message.
impl From<Error> for String {
    fn from(error: Error) -> String {
        error.to_string()
    }
}

/// Lets `Promise<T, std::io::Error>` receive the library's failures, each with a
/// kind that tells it: `TimedOut` for a timeout, `Interrupted` for a cancellation,
/// `BrokenPipe` for a broken promise, `WouldBlock` for a deadlock; a wrapped
/// `io::Error` keeps its own kind, and the rest (a panic, a message, an
/// aggregate) is `Other`. The message is the `Error`'s.
impl From<Error> for std::io::Error {
    fn from(error: Error) -> std::io::Error {
        use std::io::ErrorKind;
        let kind = match error.inner.kind {
            Kind::Timeout => ErrorKind::TimedOut,
            Kind::Cancelled => ErrorKind::Interrupted,
            Kind::Broken => ErrorKind::BrokenPipe,
            Kind::Deadlock => ErrorKind::WouldBlock,
            _ => error
                .downcast_ref::<std::io::Error>()
                .map_or(ErrorKind::Other, |e| e.kind()),
        };
        std::io::Error::new(kind, StdView(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_sync_and_one_pointer() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn converted_into_finds_the_error_inside_a_box_and_an_io_error() {
        let boxed: Box<dyn StdError + Send + Sync> = Error::broken().into();
        assert!(Error::converted_into(&*boxed).is_some_and(|e| e.is_broken()));
        let io = std::io::Error::from(Error::cancelled());
        assert_eq!(io.kind(), std::io::ErrorKind::Interrupted);
        assert!(Error::converted_into(&io).is_some_and(|e| e.is_cancelled()));
        let other: Box<dyn StdError + Send + Sync> = "no".into();
        assert!(Error::converted_into(&*other).is_none());
    }

    #[test]
    fn aggregate_display_lists_reasons_in_order() {
        let err = Error::aggregate(vec![Error::msg("a"), Error::msg("b")]);
        assert_eq!(err.to_string(), "2 errors: a; b");
    }

    #[test]
    fn io_conversion_keeps_kind() {
        let io: std::io::Error = Error::timed_out().into();
        assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
        let wrapped: Error = std::io::Error::from(std::io::ErrorKind::NotFound).into();
        let back: std::io::Error = wrapped.into();
        assert_eq!(back.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn a_panic_payload_whose_drop_panics_does_not_unwind_out_of_the_error() {
        struct PanicsWhenDropped;
        impl Drop for PanicsWhenDropped {
            fn drop(&mut self) {
                panic!("the payload's own destructor");
            }
        }
        let payload: Box<dyn Any + Send> = Box::new(PanicsWhenDropped);
        let made = std::panic::catch_unwind(AssertUnwindSafe(|| Error::panic(payload)));
        let error = made.expect("Error::panic unwound");
        assert!(error.is_panic());
        assert!(error.to_string().contains("non-string panic payload"));
    }
}
