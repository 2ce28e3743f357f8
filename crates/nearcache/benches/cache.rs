//! Hit and miss paths of the cache against raw moka, side by side in one run.
//!
//! `cargo bench -p nearcache` (or `cargo xtask bench`). The goal is that the hit paths stay
//! within 1.5x of raw moka `get`.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use nearcache::{Cache, CacheConfig, Fill, Tag};

const KEYS: u64 = 10_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn filled() -> (Cache<u64, Arc<String>>, moka::sync::Cache<u64, Arc<String>>) {
    let rt = runtime();
    let ours = Cache::new(CacheConfig::default());
    let raw = moka::sync::Cache::builder().max_capacity(100_000).build();
    for k in 0..KEYS {
        let v = Arc::new(format!("value {k}"));
        raw.insert(k, v.clone());
        let fill = Fill::found(v).with_tag(Tag::row("orgs", k % 100));
        rt.block_on(ours.get_or_store(k, || async { Ok(fill) }))
            .unwrap();
    }
    (ours, raw)
}

fn hits(c: &mut Criterion) {
    let rt = runtime();
    let (ours, raw) = filled();
    let mut g = c.benchmark_group("hit");
    let mut k = 0u64;
    let mut next = move || {
        k = (k + 7919) % KEYS;
        k
    };
    g.bench_function("moka_get", |b| b.iter(|| black_box(raw.get(&next()))));
    g.bench_function("moka_get_with", |b| {
        b.iter(|| black_box(raw.get_with(next(), || unreachable!())))
    });
    g.bench_function("nearcache_get", |b| b.iter(|| black_box(ours.get(&next()))));
    // One runtime entry for the whole batch, so that block_on's own cost is not measured.
    g.bench_function("nearcache_get_or_store", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    black_box(ours.get_or_store(next(), || async { unreachable!() }).await)
                        .unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn misses(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("miss");
    g.bench_function("moka_get_with", |b| {
        b.iter_batched(
            || moka::sync::Cache::<u64, Arc<String>>::new(100_000),
            |raw| {
                for k in 0..100 {
                    black_box(raw.get_with(k, || Arc::new(String::new())));
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("nearcache_get_or_store", |b| {
        b.iter_batched(
            || Cache::<u64, Arc<String>>::new(CacheConfig::default()),
            |ours| {
                rt.block_on(async {
                    for k in 0..100 {
                        let fill = Fill::found(Arc::new(String::new())).with_tag(Tag::row("t", k));
                        black_box(ours.get_or_store(k, || async { Ok(fill) }).await.unwrap());
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn invalidation(c: &mut Criterion) {
    let (ours, raw) = filled();
    let mut g = c.benchmark_group("invalidate");
    let mut k = 0u64;
    g.bench_function("moka_invalidate", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            raw.invalidate(&k)
        })
    });
    let mut t = 0u64;
    g.bench_function("nearcache_invalidate_tag", |b| {
        b.iter(|| {
            t = (t + 1) % 100_000;
            ours.invalidate_tag(&Tag::row("orgs", t))
        })
    });
    g.finish();
}

criterion_group!(benches, hits, misses, invalidation);
criterion_main!(benches);
