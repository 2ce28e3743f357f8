//! Unit tests of the cache: every operation, the fence, the gate, coalescing and expiry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tokio::sync::oneshot;

use crate::{Cache, CacheConfig, Cause, Fill, LoadError, Mode, Tag, Write};

fn cache() -> Cache<u32, String> {
    Cache::new(CacheConfig::default())
}

fn s(v: &str) -> String {
    v.to_string()
}

async fn found(v: &str) -> Result<Fill<String>, LoadError> {
    Ok(Fill::found(s(v)))
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

#[test]
fn put_get_delete() {
    let c = cache();
    assert_eq!(c.get(&1), None);
    assert_eq!(c.put(1, s("a")), Write::Stored);
    assert_eq!(c.get(&1), Some(s("a")));
    assert_eq!(c.put(1, s("b")), Write::Stored);
    assert_eq!(c.get(&1), Some(s("b")));
    c.delete(&1);
    assert_eq!(c.get(&1), None);
    assert!(c.is_empty());
}

#[test]
fn insert_new_only_inserts_when_absent() {
    let c = cache();
    assert_eq!(c.insert_new(1, s("a")), Write::Stored);
    assert_eq!(c.insert_new(1, s("b")), Write::Exists);
    assert_eq!(c.get(&1), Some(s("a")));
}

#[test]
fn update_and_update_existing() {
    let c = cache();
    assert_eq!(
        c.update_existing(1, |v| Ok::<_, ()>(format!("{v}!"))),
        Ok(Write::Missing)
    );
    assert_eq!(c.get(&1), None);
    assert_eq!(
        c.update(1, |v| Ok::<_, ()>(format!("{}x", v.map_or("", |v| v)))),
        Ok(Write::Stored)
    );
    assert_eq!(
        c.update(1, |v| Ok::<_, ()>(format!("{}x", v.unwrap()))),
        Ok(Write::Stored)
    );
    assert_eq!(c.get(&1), Some(s("xx")));
    assert_eq!(
        c.update_existing(1, |v| Ok::<_, ()>(format!("{v}!"))),
        Ok(Write::Stored)
    );
    assert_eq!(c.get(&1), Some(s("xx!")));
    // An error leaves the entry alone.
    assert_eq!(c.update(1, |_| Err("no")), Err("no"));
    assert_eq!(c.get(&1), Some(s("xx!")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_of_one_key_are_isolated() {
    let c: Cache<u32, u64> = Cache::new(CacheConfig::default());
    c.put(1, 0);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            for _ in 0..500 {
                c.update(1, |v| Ok::<_, ()>(v.copied().unwrap_or(0) + 1))
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.get(&1), Some(4000));
}

#[tokio::test]
async fn get_or_store_loads_once_then_hits() {
    let c = cache();
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = c
            .get_or_store(1, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                found("a").await
            })
            .await
            .unwrap();
        assert_eq!(v, Some(s("a")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let st = c.stats();
    assert_eq!((st.loads, st.hits, st.misses), (1, 2, 1));
}

#[tokio::test]
async fn negative_entries_are_cached_with_their_own_ttl() {
    let c: Cache<u32, String> = Cache::new(CacheConfig {
        negative_ttl: Duration::from_millis(200),
        ..CacheConfig::default()
    });
    let calls = AtomicUsize::new(0);
    let load = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(Fill::absent())
    };
    assert_eq!(c.get_or_store(1, load).await.unwrap(), None);
    assert_eq!(c.get_or_store(1, load).await.unwrap(), None);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the negative entry answered"
    );
    assert!(eventually(Duration::from_secs(5), || !c.touch(&1)).await);
    assert_eq!(c.get_or_store(1, load).await.unwrap(), None);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn loader_errors_are_not_cached() {
    let c = cache();
    let err = c
        .get_or_store(1, || async {
            Err(LoadError::new(std::io::Error::other("down")))
        })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "down");
    assert_eq!(
        c.get_or_store(1, || found("a")).await.unwrap(),
        Some(s("a"))
    );
    assert_eq!(c.stats().load_errors, 1);
}

type BoxLoad = futures_util::future::BoxFuture<'static, Result<Fill<String>, LoadError>>;

/// A loader that says when it started and returns what it is told, when it is told.
fn gated_loader(
    tags: Vec<Tag>,
) -> (
    impl FnOnce() -> BoxLoad,
    oneshot::Receiver<()>,
    oneshot::Sender<String>,
) {
    let (started_tx, started_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<String>();
    let loader = move || -> BoxLoad {
        Box::pin(async move {
            started_tx.send(()).unwrap();
            let value = go_rx.await.unwrap();
            Ok(Fill::found(value).with_tags(tags))
        })
    };
    (loader, started_rx, go_tx)
}

#[tokio::test]
async fn an_invalidation_during_a_load_keeps_the_stale_value_out() {
    for how in ["key", "tag", "all: key", "all: tag", "flush", "bypass"] {
        let c = cache();
        let org = Tag::row("orgs", 7);
        let (loader, started, go) = gated_loader(vec![org.clone()]);
        let task = {
            let c = c.clone();
            tokio::spawn(async move { c.get_or_store(1, loader).await })
        };
        started.await.unwrap();
        // The row changes and its notification arrives while the old row is being read.
        match how {
            "key" => c.invalidate(&1),
            "tag" => c.invalidate_tag(&org),
            "all: key" => c.invalidate_all(&[1], &[Tag::row("users", 1)]),
            "all: tag" => c.invalidate_all(&[2], std::slice::from_ref(&org)),
            "flush" => c.flush(),
            _ => {
                c.set_mode(Mode::Bypass);
                c.set_mode(Mode::Coherent);
            }
        }
        go.send(s("old")).unwrap();
        assert_eq!(
            task.await.unwrap().unwrap(),
            Some(s("old")),
            "{how}: returned"
        );
        assert_eq!(c.get(&1), None, "{how}: the stale fill was stored");
        assert_eq!(c.stats().discarded_fills, 1, "{how}");
        // The next lookup loads afresh and stores.
        assert_eq!(
            c.get_or_store(1, || found("new")).await.unwrap(),
            Some(s("new"))
        );
        assert_eq!(c.get(&1), Some(s("new")));
    }
}

#[tokio::test]
async fn an_invalidation_no_load_can_be_racing_is_not_remembered() {
    let c = cache();
    let org = Tag::row("orgs", 7);
    c.invalidate_all(&[1, 2], std::slice::from_ref(&org));
    assert_eq!(c.internals().fence_remembered, 0, "no load under way");
    // A load after it stores, tagged as it may be.
    let fill = || async { Ok(Fill::found(s("new")).with_tag(Tag::row("orgs", 7))) };
    assert_eq!(c.get_or_store(1, fill).await.unwrap(), Some(s("new")));
    assert_eq!(c.get(&1), Some(s("new")));
    // While one is under way, the same invalidation is remembered until its ticket is dropped.
    let (loader, started, go) = gated_loader(vec![org.clone()]);
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(2, loader).await })
    };
    started.await.unwrap();
    c.invalidate_all(&[2], std::slice::from_ref(&org));
    assert_eq!(c.internals().fence_remembered, 2, "a load under way");
    go.send(s("old")).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(c.get(&2), None, "its value was refused");
    c.invalidate(&3);
    assert_eq!(
        c.internals().fence_remembered,
        2,
        "nothing more once it is done"
    );
}

#[tokio::test]
async fn an_unrelated_invalidation_does_not_discard_a_fill() {
    let c = cache();
    let (loader, started, go) = gated_loader(vec![Tag::row("orgs", 7)]);
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(1, loader).await })
    };
    started.await.unwrap();
    c.invalidate_tag(&Tag::row("orgs", 8));
    c.invalidate(&2);
    go.send(s("v")).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(c.get(&1), Some(s("v")));
    assert_eq!(c.stats().discarded_fills, 0);
}

#[tokio::test]
async fn a_put_during_a_load_wins() {
    let c = cache();
    let (loader, started, go) = gated_loader(vec![]);
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(1, loader).await })
    };
    started.await.unwrap();
    c.put(1, s("written"));
    go.send(s("loaded")).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(c.get(&1), Some(s("written")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_misses_cause_one_load() {
    let c = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (c, loads, arrived) = (c.clone(), loads.clone(), arrived.clone());
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            arrived.fetch_add(1, Ordering::SeqCst);
            c.get_or_store(1, || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                release.wait_for(|r| *r).await.unwrap();
                found("one").await
            })
            .await
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || arrived.load(Ordering::SeqCst)
            == 100)
        .await
    );
    release_tx.send(true).unwrap();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Some(s("one")));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_error_reaches_every_waiter() {
    let c = cache();
    let (started_tx, started_rx) = oneshot::channel();
    let (fail_tx, fail_rx) = oneshot::channel::<()>();
    let leader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_store(1, || async move {
                started_tx.send(()).unwrap();
                fail_rx.await.unwrap();
                Err(LoadError::new(std::io::Error::other("down")))
            })
            .await
        })
    };
    started_rx.await.unwrap();
    let follower = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(1, || found("never")).await })
    };
    // The follower has joined once it shows as a miss.
    assert!(eventually(Duration::from_secs(5), || c.stats().misses == 2).await);
    fail_tx.send(()).unwrap();
    assert_eq!(leader.await.unwrap().unwrap_err().to_string(), "down");
    assert_eq!(follower.await.unwrap().unwrap_err().to_string(), "down");
    assert_eq!(c.stats().loads, 1);
}

#[tokio::test]
async fn a_hung_loader_does_not_hold_other_callers() {
    let c: Cache<u32, String> = Cache::new(CacheConfig {
        fill_wait: Duration::from_millis(50),
        ..CacheConfig::default()
    });
    let (loader, started, _never) = gated_loader(vec![]);
    let hung = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(1, loader).await })
    };
    started.await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(10), c.get_or_store(1, || found("mine")))
        .await
        .expect("the second caller gave up waiting and loaded itself");
    assert_eq!(v.unwrap(), Some(s("mine")));
    hung.abort();
}

#[tokio::test]
async fn a_cancelled_leader_hands_over_to_its_waiters() {
    let c = cache();
    let (loader, started, _go) = gated_loader(vec![]);
    let leader = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(1, loader).await })
    };
    started.await.unwrap();
    let follower = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(1, || found("mine")).await })
    };
    assert!(eventually(Duration::from_secs(5), || c.stats().misses == 2).await);
    leader.abort();
    assert_eq!(follower.await.unwrap().unwrap(), Some(s("mine")));
}

#[tokio::test]
async fn a_waiter_that_arrived_after_an_invalidation_does_not_take_the_older_load() {
    let c = cache();
    let org = Tag::row("orgs", 1);
    let (loader, started, go) = gated_loader(vec![org.clone()]);
    let leader = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(1, loader).await })
    };
    started.await.unwrap();
    c.invalidate_tag(&org);
    let follower = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_store(1, || found("new")).await })
    };
    assert!(eventually(Duration::from_secs(5), || c.stats().misses == 2).await);
    go.send(s("old")).unwrap();
    assert_eq!(leader.await.unwrap().unwrap(), Some(s("old")));
    assert_eq!(follower.await.unwrap().unwrap(), Some(s("new")));
}

/// Users 1 and 2 of the organization whose tag is returned, user 3 of another.
async fn users_of_two_orgs() -> (Cache<u32, String>, Tag) {
    let c = cache();
    let (a, b) = (Tag::row("orgs", 1), Tag::row("orgs", 2));
    for (key, tag) in [(1, &a), (2, &a), (3, &b)] {
        let fill = Fill::found(format!("user{key}")).with_tag(tag.clone());
        c.get_or_store(key, || async move { Ok(fill) })
            .await
            .unwrap();
    }
    (c, a)
}

#[tokio::test]
async fn tags_evict_every_dependent_entry() {
    let (c, a) = users_of_two_orgs().await;
    c.invalidate_tag(&a);
    assert_eq!((c.get(&1), c.get(&2)), (None, None));
    assert_eq!(c.get(&3), Some(s("user3")));
    let st = c.stats();
    assert_eq!((st.invalidations, st.invalidated_entries), (1, 2));
}

#[tokio::test]
async fn invalidate_all_removes_by_key_and_by_tag_and_counts_each() {
    let (c, a) = users_of_two_orgs().await;
    c.put(4, s("four"));
    c.put(5, s("five"));
    c.invalidate_all(&[4, 6], std::slice::from_ref(&a));
    assert_eq!((c.get(&1), c.get(&2), c.get(&4)), (None, None, None));
    assert_eq!((c.get(&3), c.get(&5)), (Some(s("user3")), Some(s("five"))));
    let st = c.stats();
    assert_eq!((st.invalidations, st.invalidated_entries), (3, 3));
    c.invalidate_all(&[], &[]);
    assert_eq!(c.stats().invalidations, 3, "nothing given, nothing counted");
}

#[tokio::test]
async fn a_replaced_entry_keeps_the_new_entrys_tags_indexed() {
    let c = cache();
    let t = Tag::row("orgs", 1);
    for v in ["a", "b"] {
        let fill = Fill::found(s(v)).with_tag(t.clone());
        c.delete(&1);
        c.get_or_store(1, || async move { Ok(fill) }).await.unwrap();
        c.run_pending_tasks();
    }
    c.invalidate_tag(&t);
    assert_eq!(c.get(&1), None);
}

#[tokio::test]
async fn bypass_serves_nothing_and_stores_nothing() {
    let c = cache();
    c.put(1, s("a"));
    c.set_mode(Mode::Bypass);
    assert_eq!(c.mode(), Mode::Bypass);
    assert_eq!(c.get(&1), None);
    let calls = AtomicUsize::new(0);
    let load = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        found("b").await
    };
    for _ in 0..3 {
        assert_eq!(c.get_or_store(1, load).await.unwrap(), Some(s("b")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(c.put(2, s("x")), Write::Bypass);
    c.set_mode(Mode::Coherent);
    // Entering bypass flushed: nothing from before comes back.
    assert_eq!(c.get(&1), None);
    c.get_or_store(1, load).await.unwrap();
    c.get_or_store(1, load).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_cache_can_start_in_bypass() {
    let c: Cache<u32, String> = Cache::new(CacheConfig {
        initial_mode: Mode::Bypass,
        ..CacheConfig::default()
    });
    c.get_or_store(1, || found("a")).await.unwrap();
    assert_eq!(c.get(&1), None);
    assert_eq!(c.stats().bypassed, 2);
}

#[tokio::test]
async fn flush_empties_everything() {
    let c = cache();
    for k in 0..100 {
        c.put(k, k.to_string());
    }
    c.flush();
    assert!((0..100).all(|k| c.get(&k).is_none()));
    assert_eq!(c.len(), 0);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let c: Cache<u32, String> = Cache::new(CacheConfig {
        ttl: Duration::from_millis(100),
        ..CacheConfig::default()
    });
    c.put(1, s("a"));
    let long = Fill::found(s("b")).with_ttl(Duration::from_secs(3600));
    c.get_or_store(2, || async { Ok(long) }).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || c.get(&1).is_none()).await);
    assert_eq!(
        c.get(&2),
        Some(s("b")),
        "the per-entry TTL outlives the default"
    );
}

#[tokio::test]
async fn reads_extend_time_to_idle_but_not_past_the_ttl() {
    // Generous margins: a loaded machine may stall the reading loop for a few hundred ms.
    let c: Cache<u32, String> = Cache::new(CacheConfig {
        ttl: Duration::from_millis(3000),
        tti: Some(Duration::from_millis(1000)),
        ..CacheConfig::default()
    });
    c.put(1, s("read"));
    c.put(2, s("idle"));
    let start = Instant::now();
    // Key 1 is read every 20 ms for two seconds; key 2 is never read, so it goes after its
    // time to idle.
    while start.elapsed() < Duration::from_millis(2000) {
        assert!(c.touch(&1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.get(&2).is_none(), "key 2 idled out");
    assert!(c.get(&1).is_some(), "key 1 was read, so it is still there");
    // Key 1 keeps being read, and still goes at its TTL.
    assert!(eventually(Duration::from_secs(5), || !c.touch(&1)).await);
    assert!(
        start.elapsed() >= Duration::from_millis(3000),
        "expired after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_ttl_past_the_clocks_range_is_forever_under_time_to_idle() {
    // A read computed the TTL's end as an `Instant`, which panicked past the clock's range.
    let c: Cache<u32, String> = Cache::new(CacheConfig {
        tti: Some(Duration::from_secs(60)),
        ..CacheConfig::default()
    });
    let forever = || async { Ok(Fill::found(s("kept")).with_ttl(Duration::MAX)) };
    assert_eq!(c.get_or_store(1, forever).await.unwrap(), Some(s("kept")));
    assert_eq!(c.get(&1), Some(s("kept")));
    assert!(c.touch(&1));
}

#[tokio::test]
async fn capacity_is_respected() {
    let evictions = Arc::new(AtomicUsize::new(0));
    let seen = evictions.clone();
    let c: Cache<u32, String> = Cache::with_callback(
        CacheConfig {
            capacity: 10,
            ..CacheConfig::default()
        },
        move |change| {
            if change.cause == Cause::Eviction {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        },
    );
    for k in 0..200 {
        c.put(k, k.to_string());
        c.get(&(k % 3));
    }
    assert!(c.len() <= 10, "len {}", c.len());
    assert!(evictions.load(Ordering::SeqCst) >= 190);
    assert_eq!(c.stats().evicted as usize, evictions.load(Ordering::SeqCst));
}

#[tokio::test]
async fn callbacks_see_every_cause_and_may_use_the_cache() {
    type Log = Arc<Mutex<Vec<(Cause, Option<u32>)>>>;
    let log: Log = Arc::default();
    let slot: Arc<Mutex<Option<Cache<u32, String>>>> = Arc::default();
    let (log2, slot2) = (log.clone(), slot.clone());
    let c: Cache<u32, String> = Cache::with_callback(
        CacheConfig {
            ttl: Duration::from_millis(100),
            ..CacheConfig::default()
        },
        move |change| {
            log2.lock()
                .unwrap()
                .push((change.cause, change.key.copied()));
            // Re-entering the cache from a callback must not deadlock.
            let cache = slot2.lock().unwrap().clone();
            if let Some(c) = cache {
                let _ = c.get(&1);
                if change.key == Some(&42) && change.cause == Cause::Insert {
                    c.delete(&42);
                }
            }
        },
    );
    *slot.lock().unwrap() = Some(c.clone());
    c.put(1, s("a"));
    c.put(1, s("b"));
    c.delete(&1);
    let tagged = Fill::found(s("t")).with_tag(Tag::new("t"));
    c.get_or_store(2, || async { Ok(tagged) }).await.unwrap();
    c.invalidate_tag(&Tag::new("t"));
    c.put(3, s("c"));
    c.flush();
    c.put(42, s("x"));
    c.put(5, s("e"));
    assert!(
        eventually(Duration::from_secs(5), || {
            c.run_pending_tasks();
            log.lock().unwrap().contains(&(Cause::Expiry, Some(5)))
        })
        .await
    );
    let log = log.lock().unwrap().clone();
    let want = [
        (Cause::Insert, Some(1)),
        (Cause::Update, Some(1)),
        (Cause::Delete, Some(1)),
        (Cause::Insert, Some(2)),
        (Cause::Invalidation, Some(2)),
        (Cause::Insert, Some(3)),
        (Cause::Flush, None),
        (Cause::Insert, Some(42)),
        (Cause::Delete, Some(42)),
        (Cause::Insert, Some(5)),
    ];
    assert_eq!(&log[..want.len()], &want);
}

#[test]
fn a_callback_may_update_the_key_it_is_told_about() {
    let slot: Arc<Mutex<Option<Cache<u32, String>>>> = Arc::default();
    let slot2 = slot.clone();
    let c: Cache<u32, String> = Cache::with_callback(CacheConfig::default(), move |change| {
        let cache = slot2.lock().unwrap().clone();
        if let (Some(c), Cause::Insert, Some(&k)) = (cache, change.cause, change.key) {
            c.update(k, |v| Ok::<_, ()>(format!("{}+", v.unwrap())))
                .unwrap();
        }
    });
    *slot.lock().unwrap() = Some(c.clone());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let c2 = c.clone();
    std::thread::spawn(move || {
        c2.update(7, |_| Ok::<_, ()>(s("v"))).unwrap();
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no deadlock: the callback ran with the key's lock released");
    assert_eq!(c.get(&7), Some(s("v+")));
}

#[tokio::test]
async fn the_tag_index_forgets_expired_entries() {
    let c: Cache<u32, String> = Cache::new(CacheConfig {
        ttl: Duration::from_millis(50),
        ..CacheConfig::default()
    });
    for k in 0..50 {
        let fill = Fill::found(s("v")).with_tag(Tag::row("t", k));
        c.get_or_store(k, || async { Ok(fill) }).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(5), || {
            c.run_pending_tasks();
            c.indexed_tags() == 0
        })
        .await
    );
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    InsertNew(u8, u8),
    Delete(u8),
    Fill(u8, u8, u8),
    InvalidateTag(u8),
    Update(u8),
    Flush,
    Bypass,
    Coherent,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..8u8, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (0..8u8, any::<u8>()).prop_map(|(k, v)| Op::InsertNew(k, v)),
        (0..8u8).prop_map(Op::Delete),
        (0..8u8, any::<u8>(), 0..3u8).prop_map(|(k, v, t)| Op::Fill(k, v, t)),
        (0..3u8).prop_map(Op::InvalidateTag),
        (0..8u8).prop_map(Op::Update),
        Just(Op::Flush),
        Just(Op::Bypass),
        Just(Op::Coherent),
    ]
}

proptest! {
    /// Sequential operations agree with a map plus a mode flag.
    #[test]
    fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let c: Cache<u8, u32> = Cache::new(CacheConfig::default());
        // key -> (value, tag)
        let mut model: std::collections::HashMap<u8, (u32, Option<u8>)> = Default::default();
        let mut coherent = true;
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    prop_assert_eq!(c.put(k, v.into()).is_stored(), coherent);
                    if coherent {
                        let tag = model.get(&k).and_then(|e| e.1);
                        model.insert(k, (v.into(), tag));
                    }
                }
                Op::InsertNew(k, v) => {
                    let fresh = coherent && !model.contains_key(&k);
                    prop_assert_eq!(c.insert_new(k, v.into()).is_stored(), fresh);
                    if fresh { model.insert(k, (v.into(), None)); }
                }
                Op::Delete(k) => { c.delete(&k); model.remove(&k); }
                Op::Fill(k, v, t) => {
                    let fill = Fill::found(u32::from(v)).with_tag(Tag::row("t", t));
                    let got = rt.block_on(c.get_or_store(k, || async { Ok(fill) })).unwrap();
                    match model.get(&k) {
                        Some(&(old, _)) => prop_assert_eq!(got, Some(old)),
                        None => {
                            prop_assert_eq!(got, Some(u32::from(v)));
                            if coherent { model.insert(k, (v.into(), Some(t))); }
                        }
                    }
                }
                Op::InvalidateTag(t) => {
                    c.invalidate_tag(&Tag::row("t", t));
                    model.retain(|_, e| e.1 != Some(t));
                }
                Op::Update(k) => {
                    let stored = c.update(k, |v| Ok::<_, ()>(v.copied().unwrap_or(0) + 1)).unwrap();
                    prop_assert_eq!(stored.is_stored(), coherent);
                    if coherent {
                        let e = model.entry(k).or_insert((0, None));
                        e.0 += 1;
                    }
                }
                Op::Flush => { c.flush(); model.clear(); }
                Op::Bypass => { c.set_mode(Mode::Bypass); coherent = false; model.clear(); }
                Op::Coherent => { c.set_mode(Mode::Coherent); coherent = true; }
            }
            for k in 0..8u8 {
                prop_assert_eq!(c.get(&k), model.get(&k).map(|e| e.0), "key {}", k);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_begins_after_an_invalidation_never_takes_a_stored_older_load() {
    // The leader stores the old value and is held in the insert callback, before it hands its
    // outcome over and unregisters its flight. The tag is invalidated meanwhile. A caller that
    // begins after that joins the still-registered flight: the leader having stored its value
    // must not make that value acceptable, since the invalidation evicted it again.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let c: Cache<u32, String> = Cache::with_callback(CacheConfig::default(), move |change| {
        if change.cause == Cause::Insert && change.value.is_some_and(|v| v == "old") {
            held_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
    });
    let org = Tag::row("orgs", 1);
    let leader = {
        let (c, org) = (c.clone(), org.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(
                c.get_or_store(1, || async move { Ok(Fill::found(s("old")).with_tag(org)) }),
            )
        })
    };
    held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    c.invalidate_tag(&org);
    assert_eq!(c.get(&1), None);
    use std::future::Future as _;
    let mut late = std::pin::pin!(c.get_or_store(1, || found("new")));
    // One poll: it misses, joins the leader's flight and waits for its outcome.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(late.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "the late caller should be waiting on the leader"
    );
    release_tx.send(()).unwrap();
    assert_eq!(late.await.unwrap(), Some(s("new")));
    assert_eq!(leader.join().unwrap().unwrap(), Some(s("old")));
    assert_eq!(c.get(&1), Some(s("new")));
}

/// ConCache's `ttl_check_interval`: on an idle cache, expiry callbacks still fire within about
/// the interval; without it they wait until the cache is next used.
#[test]
fn expiry_callbacks_fire_on_an_idle_cache_with_a_check_interval() {
    let idle_cache = |check: Option<Duration>| {
        let expired = Arc::new(AtomicUsize::new(0));
        let seen = expired.clone();
        let c: Cache<u32, String> = Cache::with_callback(
            CacheConfig {
                ttl: Duration::from_millis(50),
                ttl_check_interval: check,
                ..CacheConfig::default()
            },
            move |change| {
                if change.cause == Cause::Expiry {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            },
        );
        c.put(1, s("soon gone"));
        (c, expired)
    };
    let (checked, fired) = idle_cache(Some(Duration::from_millis(20)));
    let (unchecked, silent) = idle_cache(None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fired.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "no expiry callback on the idle cache"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(silent.load(Ordering::SeqCst), 0, "nothing ran expiry there");
    unchecked.run_pending_tasks();
    assert_eq!(
        silent.load(Ordering::SeqCst),
        1,
        "it waited for the next use"
    );
    drop(checked);
}
