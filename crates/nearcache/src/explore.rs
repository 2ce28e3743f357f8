//! An exhaustive explorer of interleavings, for test builds only.
//!
//! The cache's protocol has step boundaries (a ticket taken, a loader returned, a fill checked
//! against the fence and inserted, an outcome handed over, a flight unregistered, a waiter
//! taking an outcome over). In test builds [`Cache`](crate::Cache) reports each one to a hook
//! and yields there, so an operation is a future that advances one step per poll.
//!
//! [`explore`] runs a scenario (a few such operations on a fresh cache) under every order of
//! steps: a depth-first search over which operation takes the next step, re-running the
//! scenario from scratch for every prefix (stateless model checking). A poll that reaches no
//! step boundary and does not finish is a blocked operation (a waiter whose leader has not
//! handed over yet); it changed nothing and is not a step. If every unfinished operation is
//! blocked the scenario deadlocked, which fails the exploration.
//!
//! Why not loom or shuttle: both replace the synchronisation primitives of the code under test
//! with their own, and the cache sits on moka, whose internals use their own locks and atomics
//! that neither tool can see or schedule. The operations that only take the fence's mutex
//! (`invalidate`, `invalidate_tag`, `flush`, `set_mode`, `put`, `delete`) are one step each:
//! everything they change is changed under that mutex, and the lock-free readers (hits, tickets)
//! see each change as one atomic store, so there is no boundary inside them worth pausing at;
//! the scenarios pause before and after each.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A step boundary of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A caller of `get_or_store` took the lead of a load (its flight is registered).
    Led,
    /// A caller of `get_or_store` joined another's flight and waits for its outcome.
    Joined,
    /// A ticket was taken; the loader is called next.
    TicketTaken,
    /// The loader returned.
    LoaderReturned,
    /// The fill was checked against the fence and, if admitted, inserted (one critical section).
    Filled,
    /// The leader handed its outcome over to its waiters.
    HandedOver,
    /// A waiter took the leader's outcome as its own answer.
    TookOver,
    /// A waiter refused the leader's outcome (or had none); it looks at the cache again, then
    /// loads for itself.
    Refused,
    /// A boundary of the scenario's own (an operation's own pause, a loader reading).
    Scenario(&'static str),
}

/// The hook a cache reports its steps to.
pub(crate) type Hook = Arc<dyn Fn(Step) + Send + Sync>;

/// A future that is pending once, then ready: where an operation gives the explorer its turn.
pub(crate) fn yield_once() -> impl Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |_| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            Poll::Pending
        }
    })
}

/// What one run of a scenario shares with its operations: the step clock, the trace and the
/// hook to install in the cache.
#[derive(Clone)]
pub(crate) struct World {
    clock: Arc<AtomicUsize>,
    stepped: Arc<AtomicBool>,
    trace: Arc<Mutex<Vec<String>>>,
    current: Arc<AtomicUsize>,
}

impl World {
    fn new() -> Self {
        Self {
            clock: Arc::new(AtomicUsize::new(0)),
            stepped: Arc::new(AtomicBool::new(false)),
            trace: Arc::new(Mutex::new(Vec::new())),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The hook to install in the scenario's cache.
    pub(crate) fn hook(&self) -> Hook {
        let world = self.clone();
        Arc::new(move |step| world.record(step))
    }

    /// The index of the step being taken now. An event of step `a` happened before one of step
    /// `b` if `a < b`.
    pub(crate) fn now(&self) -> usize {
        self.clock.load(Ordering::SeqCst)
    }

    /// A boundary of the scenario's own: the operation gives up its turn here.
    pub(crate) async fn pause(&self, what: &'static str) {
        self.record(Step::Scenario(what));
        yield_once().await;
    }

    fn record(&self, step: Step) {
        self.stepped.store(true, Ordering::SeqCst);
        let op = self.current.load(Ordering::SeqCst);
        self.trace
            .lock()
            .unwrap()
            .push(format!("op {op}: {step:?}"));
    }

    /// The steps taken so far, one line each.
    pub(crate) fn trace(&self) -> String {
        self.trace.lock().unwrap().join("\n")
    }
}

/// An operation of a scenario.
pub(crate) type Op = Pin<Box<dyn Future<Output = ()>>>;

/// How an exploration went.
#[derive(Debug, Default)]
pub(crate) struct Explored {
    /// Complete interleavings run and checked.
    pub(crate) interleavings: usize,
    /// Runs cut short because the order they asked for was not possible (an operation chosen
    /// next was blocked); each repeats a prefix of a complete one.
    pub(crate) pruned: usize,
}

/// Runs `scenario` under every interleaving of its operations' steps and calls `check` after
/// each complete run.
///
/// `scenario` builds a fresh world: it gets the [`World`] (install [`World::hook`] in its cache)
/// and returns the operations plus whatever `check` needs. `check` returns an error message for
/// a run that broke an invariant; the exploration then panics with that message and the run's
/// trace.
pub(crate) fn explore<S>(
    scenario: impl Fn(&World) -> (Vec<Op>, S),
    check: impl Fn(&S) -> Result<(), String>,
) -> Explored {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // Timeouts (a waiter's `fill_wait`) need a runtime to register with; its clock is paused
    // and never driven, so no timeout fires and every order is decided by the explorer alone.
    let _entered = runtime.enter();
    let mut explored = Explored::default();
    let mut prefix: Vec<usize> = Vec::new();
    loop {
        let world = World::new();
        let (ops, state) = scenario(&world);
        let (taken, complete) = run(&world, ops, &prefix);
        if complete {
            explored.interleavings += 1;
            if let Err(why) = check(&state) {
                let order: Vec<usize> = taken.iter().map(|(chosen, _)| *chosen).collect();
                panic!(
                    "invariant broken after {} interleavings: {why}\norder: {order:?}\ntrace:\n{}",
                    explored.interleavings,
                    world.trace()
                );
            }
        } else {
            explored.pruned += 1;
        }
        // Next: the deepest decision with an unfinished operation left to try in its place.
        let next = (0..taken.len()).rev().find_map(|d| {
            let (chosen, unfinished) = &taken[d];
            let other = unfinished.iter().copied().find(|&i| i > *chosen)?;
            Some((d, other))
        });
        match next {
            Some((d, other)) => {
                prefix = taken[..d].iter().map(|(chosen, _)| *chosen).collect();
                prefix.push(other);
            }
            None => return explored,
        }
    }
}

/// The operation chosen at a decision, and the operations unfinished there.
type Decision = (usize, Vec<usize>);

/// One run: at decision `d`, the first operation at or after `prefix[d]` (0 past the prefix)
/// that can take a step takes it. Returns the decisions, and whether the run completed (false
/// if no operation at or after a prefix's choice could step).
fn run(world: &World, ops: Vec<Op>, prefix: &[usize]) -> (Vec<Decision>, bool) {
    let ops: Vec<Rc<RefCell<Option<Op>>>> = ops
        .into_iter()
        .map(|op| Rc::new(RefCell::new(Some(op))))
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut taken = Vec::new();
    // Polls operation `i` once; returns whether that was a step (it reached a boundary or
    // finished).
    let mut poll = |i: usize| -> bool {
        let mut slot = ops[i].borrow_mut();
        let Some(op) = slot.as_mut() else {
            return false;
        };
        world.stepped.store(false, Ordering::SeqCst);
        world.current.store(i, Ordering::SeqCst);
        match op.as_mut().poll(&mut cx) {
            Poll::Ready(()) => {
                *slot = None;
                true
            }
            Poll::Pending => world.stepped.load(Ordering::SeqCst),
        }
    };
    loop {
        let unfinished: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].borrow().is_some())
            .collect();
        if unfinished.is_empty() {
            return (taken, true);
        }
        let want = prefix.get(taken.len()).copied().unwrap_or(0);
        match unfinished
            .iter()
            .copied()
            .filter(|&i| i >= want)
            .find(|&i| poll(i))
        {
            Some(i) => {
                taken.push((i, unfinished));
                world.clock.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                let any = unfinished
                    .iter()
                    .copied()
                    .filter(|&i| i < want)
                    .any(&mut poll);
                assert!(
                    any,
                    "deadlock: operations {unfinished:?} are all blocked\ntrace:\n{}",
                    world.trace()
                );
                return (taken, false);
            }
        }
    }
}

#[cfg(test)]
mod scenarios;
