//! Two coroutines that define and use named values in any order.
//!
//! From seed 004 ("Writing our own event loops in python"), which builds a custom
//! event loop whose coroutines yield `set_var`/`get_var` requests, and parks a
//! coroutine that asks for a name nobody has set yet. With thenable no custom loop
//! is needed: a name is just a promise, `get` hands it out and `set` resolves it, and
//! the ordinary task machinery does the parking and waking.
//!
//! Run it with `cargo run --example namespace`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use thenable::{block_on, spawn_local, Error, Promise, Resolver};

enum Slot {
    Known(i64),
    /// Someone asked before it was set: the promise they got, and how to keep it.
    /// Beware that a name never set then hangs `block_on` rather than failing: an
    /// unsettled resolver keeps its loop alive, as it might be settled from any thread.
    Awaited(Promise<i64>, Resolver<i64>),
}

/// Shared by the tasks of one thread, hence `Rc<RefCell>` and `spawn_local`.
#[derive(Clone, Default)]
struct Namespace {
    slots: Rc<RefCell<HashMap<String, Slot>>>,
}

impl Namespace {
    /// Never waits, so unlike the seed's `set_var` there is nothing to await.
    fn set(&self, name: &str, value: i64) {
        println!("    set {name} = {value}");
        let previous = self
            .slots
            .borrow_mut()
            .insert(name.into(), Slot::Known(value));
        if let Some(Slot::Awaited(_, resolver)) = previous {
            // Wakes every task awaiting `name`; they run later, on the loop, not here.
            resolver.resolve(value);
        }
    }

    fn get(&self, name: &str) -> Promise<i64> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots.entry(name.into()).or_insert_with(|| {
            println!("    {name} is not known yet: waiting");
            let (promise, resolver) = Promise::pending();
            Slot::Awaited(promise, resolver)
        });
        match slot {
            Slot::Known(value) => Promise::resolved(*value),
            // Cloning lets several tasks wait on the same name.
            Slot::Awaited(promise, _) => promise.clone(),
        }
    }
}

async fn do_some_math(ns: Namespace) -> Result<(), Error> {
    ns.set("one", 1);
    ns.set("two", 2);
    let three = ns.get("three").await?;
    let four = ns.get("four").await?;
    ns.set("seven", three + four);
    println!("Done some math");
    Ok(())
}

async fn do_some_more_math(ns: Namespace) -> Result<(), Error> {
    let one = ns.get("one").await?;
    let two = ns.get("two").await?;
    let three = one + two;
    let four = three + one;
    ns.set("three", three);
    ns.set("four", four);
    let seven = ns.get("seven").await?;
    println!("Done some more math, ended with: {seven}");
    Ok(())
}

fn main() {
    let ns = Namespace::default();
    let math = spawn_local(do_some_math(ns.clone()));
    let more_math = spawn_local(do_some_more_math(ns));
    block_on(async {
        math.await?;
        more_math.await
    })
    .unwrap();
}
