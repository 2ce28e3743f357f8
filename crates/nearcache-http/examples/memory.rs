//! What a cached principal costs in memory: `memory <n>` fills a nearcache `Cache` with `n`
//! principals as the service caches them (its rendered JSON bodies, the user's id and active
//! flag, its organization's tag, the tag index), and prints one JSON line with the process's resident set before
//! and after, and the average sizes of the value and of the JSON. `memory <n> <max_bytes>`
//! bounds the cache in bytes as `--cache-max-bytes` does, and prints what it kept. Run in a
//! process of its own by `cargo xtask bench`, so that no earlier allocation is reused.

use std::sync::Arc;

use nearcache::{Cache, CacheConfig};
use nearcache_http::CachedPrincipal;
use nearcache_pg::{OrgId, Organization, Principal, User, UserId};
use time::OffsetDateTime;
use uuid::Uuid;

// The allocator the service uses (see nearcache-server's main.rs).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Resident set of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("usage: memory <entries> [max_bytes]");
    let max_bytes: Option<u64> = std::env::args().nth(2).and_then(|n| n.parse().ok());
    // As the server makes it (`--cache-capacity`, or `--cache-max-bytes`).
    let cache: Cache<UserId, Arc<CachedPrincipal>> = Cache::with_weigher(
        CacheConfig {
            capacity: n * 2,
            max_bytes,
            ..CacheConfig::default()
        },
        |_, p: &Arc<CachedPrincipal>| p.heap_bytes(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // In microseconds, as Postgres keeps a `timestamptz` and the repository reads it back.
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_microsecond(now.microsecond())
        .expect("a microsecond of a valid time");
    // Organizations of 1000 users, as the bench's seed makes them.
    let orgs: Vec<Organization> = (0..n.div_ceil(1000))
        .map(|i| Organization {
            id: OrgId::new(Uuid::new_v4()),
            name: format!("Organization {i}"),
            plan: "pro".into(),
            created_at: now,
            updated_at: now,
        })
        .collect();
    let before = rss();
    let (mut value_bytes, mut json_bytes) = (0u64, 0u64);
    // The value is what the cache keeps of a principal: its id, whether it is active, and
    // the handles of its bodies (the bodies are counted as JSON).
    rt.block_on(async {
        for i in 0..n {
            let organization = orgs[usize::try_from(i / 1000).unwrap()].clone();
            let user = User {
                id: UserId::new(Uuid::new_v4()),
                org_id: organization.id,
                email: format!("user{i}@example.com"),
                name: format!("User {i}"),
                active: true,
                created_at: now,
                updated_at: now,
            };
            let id = user.id;
            // Tagged as the service's loader tags it.
            let fill = CachedPrincipal::fill(Principal { user, organization });
            json_bytes += fill.value().map_or(0, |p| p.json_len() as u64);
            cache.get_or_store(id, || async { Ok(fill) }).await.unwrap();
        }
    });
    cache.run_pending_tasks();
    let after = rss();
    if max_bytes.is_none() {
        assert_eq!(cache.len(), n, "every principal cached");
    }
    value_bytes += n * std::mem::size_of::<CachedPrincipal>() as u64;
    println!(
        "{{\"entries\":{n},\"rss_before\":{before},\"rss_after\":{after},\"value_bytes\":{},\"json_bytes\":{},\"kept\":{},\"weighted\":{}}}",
        value_bytes / n.max(1),
        json_bytes / n.max(1),
        cache.len(),
        cache.weighted_size()
    );
}
