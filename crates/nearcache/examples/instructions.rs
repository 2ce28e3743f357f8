//! One operation of the cache core (or of raw moka), `n` times after a fixed setup: run under
//! `valgrind --tool=callgrind` by `cargo xtask bench`, once with `n = 0` and once with `n`, so
//! that the difference over `n` is the instructions of one operation, exactly, whatever else
//! the machine is doing.
//!
//! `instructions <operation> <n> [entries]`; operations: `hit`, `moka-get`, `miss`,
//! `moka-insert`, `invalidate-tag-1`, `invalidate-tag-1000`, `moka-invalidate`, `flush`
//! (`entries`, default 10 000, sizes the setup of `flush`).

use std::hint::black_box;
use std::sync::Arc;

use nearcache::{Cache, CacheConfig, Fill, Tag};

const KEYS: u64 = 10_000;

fn ours(capacity: u64) -> Cache<u64, Arc<String>> {
    Cache::new(CacheConfig {
        capacity,
        ..CacheConfig::default()
    })
}

fn raw(capacity: u64) -> moka::sync::Cache<u64, Arc<String>> {
    moka::sync::Cache::builder().max_capacity(capacity).build()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// `entries` entries, entry `k` tagged with `tag(k)`.
fn filled(entries: u64, tag: impl Fn(u64) -> Tag) -> Cache<u64, Arc<String>> {
    let cache = ours(entries.max(KEYS) * 2);
    block_on(async {
        for k in 0..entries {
            let fill = Fill::found(Arc::new(format!("value {k}"))).with_tag(tag(k));
            cache.get_or_store(k, || async { Ok(fill) }).await.unwrap();
        }
    });
    cache.run_pending_tasks();
    cache
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: instructions <operation> <n> [entries]";
    let op = args.get(1).expect(usage).as_str();
    let n: u64 = args.get(2).expect(usage).parse().expect(usage);
    let entries: u64 = args.get(3).map_or(KEYS, |e| e.parse().expect(usage));
    // Keys visited in a fixed scattered order.
    let key = |i: u64| (i * 7919) % KEYS;
    match op {
        "hit" => {
            let cache = filled(KEYS, |k| Tag::row("orgs", k % 100));
            for i in 0..n {
                black_box(cache.get(&key(i)));
            }
        }
        "moka-get" => {
            let cache = raw(KEYS * 2);
            for k in 0..KEYS {
                cache.insert(k, Arc::new(format!("value {k}")));
            }
            cache.run_pending_tasks();
            for i in 0..n {
                black_box(cache.get(&key(i)));
            }
        }
        "miss" => {
            let cache = ours(KEYS * 2);
            let value = Arc::new(String::from("value"));
            block_on(async {
                for k in 0..n {
                    let fill = Fill::found(value.clone()).with_tag(Tag::row("users", k));
                    black_box(cache.get_or_store(k, || async { Ok(fill) }).await.unwrap());
                }
            });
        }
        "moka-insert" => {
            let cache = raw(KEYS * 2);
            let value = Arc::new(String::from("value"));
            for k in 0..n {
                cache.insert(k, value.clone());
            }
        }
        "invalidate-tag-1" => {
            let cache = filled(KEYS, |k| Tag::row("users", k));
            for i in 0..n {
                cache.invalidate_tag(&Tag::row("users", key(i)));
            }
        }
        "invalidate-tag-1000" => {
            // Ten tags of 1000 dependents each, whatever n (at most 10).
            let cache = filled(KEYS, |k| Tag::row("orgs", k / 1000));
            for t in 0..n.min(10) {
                cache.invalidate_tag(&Tag::row("orgs", t));
            }
        }
        "moka-invalidate" => {
            let cache = raw(KEYS * 2);
            for k in 0..KEYS {
                cache.insert(k, Arc::new(format!("value {k}")));
            }
            cache.run_pending_tasks();
            for i in 0..n {
                cache.invalidate(&key(i));
            }
        }
        "flush" => {
            let cache = filled(entries, |k| Tag::row("orgs", k % 1000));
            for _ in 0..n {
                cache.flush();
                // The flush is lazy in moka: count the work it leaves too.
                cache.run_pending_tasks();
            }
        }
        _ => panic!("unknown operation {op:?}; {usage}"),
    }
}
