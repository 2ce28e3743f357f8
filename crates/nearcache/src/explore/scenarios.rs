//! Scenarios run under every interleaving, and the invariant each run is checked against.
//!
//! The invariant (the crate docs' consistency model): no `get_or_store` or `get` that begins
//! after an invalidation of the key or of one of the value's tags, a `put` or `delete` of the
//! key, or a flush has returned answers with a value older than the change that invalidation
//! stands for; and once every operation has finished, the cache holds no value older than the
//! database's.
//!
//! The database is a version number. A writer commits (the version goes up), pauses, then tells
//! the cache; a loader reads the version and returns it. An operation that has not taken its
//! first step has not begun, so "before" an operation needs no pause of its own.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use super::{explore, Explored, Op, World};
use crate::{Cache, CacheConfig, Fill, LoadError, Mode, Tag};

const KEY: u32 = 1;

fn org() -> Tag {
    Tag::row("organizations", 7)
}

#[derive(Debug)]
struct Read {
    op: &'static str,
    began: usize,
    value: Option<u64>,
}

#[derive(Debug)]
struct Write {
    op: &'static str,
    version: u64,
    done: usize,
}

#[derive(Default)]
struct Log {
    reads: Vec<Read>,
    writes: Vec<Write>,
}

/// One run's world: the cache under test, the database, and what the operations saw.
#[derive(Clone)]
struct Run {
    world: World,
    cache: Cache<u32, u64>,
    db: Arc<AtomicU64>,
    loads: Arc<AtomicUsize>,
    log: Rc<RefCell<Log>>,
}

impl Run {
    fn new(world: &World) -> Self {
        let cache = Cache::new(CacheConfig {
            capacity: 16,
            ..CacheConfig::default()
        });
        cache.explore_with(world.hook());
        Self {
            world: world.clone(),
            cache,
            db: Arc::new(AtomicU64::new(1)),
            loads: Arc::new(AtomicUsize::new(0)),
            log: Rc::default(),
        }
    }

    /// `get_or_store` of the key; the value depends on the key's row and on `org()`.
    fn load(&self, op: &'static str) -> Op {
        let run = self.clone();
        Box::pin(async move {
            let began = run.world.now();
            // The loader reads in the step after the ticket, which ends as it returns.
            let read = run.clone();
            let loader = move || read.read_db();
            let value = run.cache.get_or_store(KEY, loader).await.unwrap();
            run.log.borrow_mut().reads.push(Read { op, began, value });
        })
    }

    /// A refresh of the key (what the refresher does with a key a read found due), loading
    /// as `load` does.
    fn refresh(&self) -> Op {
        let run = self.clone();
        Box::pin(async move {
            let read = run.clone();
            let loader = move |_key: u32| read.read_db();
            run.cache.refresh_one(KEY, &loader).await;
        })
    }

    /// What a loader of the key reads: the database's version, as a value that depends on
    /// the key's row and on `org()`. Counts the load.
    fn read_db(&self) -> impl std::future::Future<Output = Result<Fill<u64>, LoadError>> {
        let (db, loads) = (self.db.clone(), self.loads.clone());
        async move {
            loads.fetch_add(1, SeqCst);
            let version = db.load(SeqCst);
            Ok(Fill::found(version)
                .with_tag(Tag::row("users", KEY))
                .with_tag(org()))
        }
    }

    /// A plain `get`, one step.
    fn get(&self, op: &'static str) -> Op {
        let run = self.clone();
        Box::pin(async move {
            let began = run.world.now();
            let value = run.cache.get(&KEY);
            run.log.borrow_mut().reads.push(Read { op, began, value });
        })
    }

    /// Commits a new version, then tells the cache with `tell`.
    fn write(&self, op: &'static str, tell: impl FnOnce(&Cache<u32, u64>, u64) + 'static) -> Op {
        let run = self.clone();
        Box::pin(async move {
            let version = run.db.fetch_add(1, SeqCst) + 1;
            run.world.pause("committed").await;
            tell(&run.cache, version);
            let done = run.world.now();
            run.log
                .borrow_mut()
                .writes
                .push(Write { op, version, done });
        })
    }

    /// An invalidation of a tag the key's value does not carry: one step, no commit to its row.
    fn unrelated(&self) -> Op {
        let run = self.clone();
        Box::pin(async move {
            run.cache.invalidate_tag(&Tag::row("organizations", 8));
        })
    }

    /// The gate's round trip, as a listener does it on a reconnect.
    fn bypass_round_trip(&self) -> Op {
        let run = self.clone();
        Box::pin(async move {
            run.cache.set_mode(Mode::Bypass);
            run.world.pause("listening again").await;
            run.cache.set_mode(Mode::Coherent);
        })
    }
}

fn check(run: &Run) -> Result<(), String> {
    let log = run.log.borrow();
    for r in &log.reads {
        let Some(value) = r.value else { continue };
        for w in log.writes.iter().filter(|w| w.done < r.began) {
            if value < w.version {
                return Err(format!(
                    "{} began at step {} after {} (version {}) returned at step {}, yet answered \
                     version {value}",
                    r.op, r.began, w.op, w.version, w.done
                ));
            }
        }
    }
    let latest = run.db.load(SeqCst);
    match run.cache.get(&KEY) {
        Some(v) if v != latest => Err(format!(
            "the cache kept version {v} after every operation finished; the database has {latest}"
        )),
        _ => Ok(()),
    }
}

fn report(name: &str, explored: &Explored) {
    println!(
        "explorer: {name}: {} interleavings checked ({} pruned prefixes)",
        explored.interleavings, explored.pruned
    );
    assert!(explored.interleavings > 0);
}

#[test]
fn two_loads_and_an_invalidation_of_their_tag() {
    let explored = explore(
        |w| {
            let run = Run::new(w);
            let ops = vec![
                run.load("load A"),
                run.load("load B"),
                run.write("invalidate_tag", |c, _| c.invalidate_tag(&org())),
            ];
            (ops, run)
        },
        check,
    );
    report("2 loads + invalidate_tag", &explored);
}

#[test]
fn an_unrelated_invalidation_does_not_break_coalescing() {
    // Two loads of one key share one load in every order, however an unrelated tag's
    // invalidation falls between them: a waiter checks the outcome's own tags, not the epoch.
    let explored = explore(
        |w| {
            let run = Run::new(w);
            let ops = vec![run.load("load A"), run.load("load B"), run.unrelated()];
            (ops, run)
        },
        |run| {
            check(run)?;
            match run.loads.load(SeqCst) {
                1 => Ok(()),
                n => Err(format!("{n} loads where one serves both callers")),
            }
        },
    );
    report("2 loads + unrelated invalidate_tag", &explored);
}

#[test]
fn a_load_a_flush_and_a_bypass_round_trip() {
    let explored = explore(
        |w| {
            let run = Run::new(w);
            let ops = vec![
                run.load("load A"),
                run.write("flush", |c, _| c.flush()),
                run.bypass_round_trip(),
                run.load("load B"),
            ];
            (ops, run)
        },
        check,
    );
    report("load + flush + bypass round trip + load", &explored);
}

#[test]
fn a_load_and_a_put() {
    let explored = explore(
        |w| {
            let run = Run::new(w);
            let ops = vec![
                run.load("load A"),
                run.write("put", |c, v| {
                    c.put(KEY, v);
                }),
                run.load("load B"),
                run.get("get"),
            ];
            (ops, run)
        },
        check,
    );
    report("load + put + load + get", &explored);
}

#[test]
fn a_load_and_a_delete() {
    let explored = explore(
        |w| {
            let run = Run::new(w);
            let ops = vec![
                run.load("load A"),
                run.write("delete", |c, _| c.delete(&KEY)),
                run.load("load B"),
                run.get("get"),
            ];
            (ops, run)
        },
        check,
    );
    report("load + delete + load + get", &explored);
}

#[test]
fn a_refresh_an_invalidation_and_a_load() {
    let explored = explore(
        |w| {
            let run = Run::new(w);
            // Cached before the scenario begins: the version the refresh replaces.
            run.cache.put(KEY, 1);
            let ops = vec![
                run.refresh(),
                run.write("invalidate", |c, _| c.invalidate(&KEY)),
                run.load("load B"),
                run.get("get"),
            ];
            (ops, run)
        },
        check,
    );
    report("refresh + invalidate + load + get", &explored);
}

#[test]
fn a_refresh_and_an_invalidation_of_its_tag() {
    let explored = explore(
        |w| {
            let run = Run::new(w);
            let ops = vec![
                run.load("load A"),
                run.refresh(),
                run.write("invalidate_tag", |c, _| c.invalidate_tag(&org())),
                run.get("get"),
            ];
            (ops, run)
        },
        check,
    );
    report("load + refresh + invalidate_tag + get", &explored);
}

#[test]
fn two_loads_and_an_invalidation_of_their_tag_with_another_key_in_one_step() {
    let explored = explore(
        |w| {
            let run = Run::new(w);
            let ops = vec![
                run.load("load A"),
                run.load("load B"),
                run.write("invalidate_all", |c, _| {
                    c.invalidate_all(&[KEY + 1], &[org()])
                }),
                run.get("get"),
            ];
            (ops, run)
        },
        check,
    );
    report(
        "2 loads + invalidate_all (another key, their tag) + get",
        &explored,
    );
}

#[test]
fn a_load_and_an_invalidation_of_its_key_in_one_step() {
    let explored = explore(
        |w| {
            let run = Run::new(w);
            let ops = vec![
                run.load("load A"),
                run.write("invalidate_all", |c, _| {
                    c.invalidate_all(&[KEY], &[Tag::row("users", KEY)]);
                }),
                run.load("load B"),
                run.get("get"),
            ];
            (ops, run)
        },
        check,
    );
    report(
        "load + invalidate_all (its key, a tag it lacks) + load + get",
        &explored,
    );
}
