//! What the cache spends per entry beyond its key, value and tag names, the figures behind
//! `ENTRY_OVERHEAD` and `TAG_OVERHEAD`: `overhead <n> <tags>` fills a cache of `u64` keys and
//! values with `n` entries of `tags` row tags each and prints the resident set it adds per
//! entry, with jemalloc as the server runs. One process per run, so that no freed memory is
//! reused: `for t in 0 1 2; do target/release/examples/overhead 1000000 $t; done` after
//! `cargo build --release -p nearcache --example overhead`.

use nearcache::{Cache, CacheConfig, Fill, Tag};

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
        .expect("usage: overhead <entries> <tags>");
    let tags: u64 = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("usage: overhead <entries> <tags>");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    {
        let cache: Cache<u64, u64> = Cache::new(CacheConfig {
            capacity: n * 2,
            ..CacheConfig::default()
        });
        let before = rss();
        let mut names = 0;
        rt.block_on(async {
            for i in 0..n {
                let mut fill = Fill::found(i);
                for t in 0..tags {
                    let table = if t == 0 { "users" } else { "organizations" };
                    let tag = Tag::row(table, i * 10 + t);
                    names += tag.as_str().len() as u64;
                    fill = fill.with_tag(tag);
                }
                cache.get_or_store(i, || async { Ok(fill) }).await.unwrap();
            }
        });
        cache.run_pending_tasks();
        let per_entry = (rss() - before) / n;
        println!(
            "{{\"tags\":{tags},\"per_entry\":{per_entry},\"tag_names\":{},\"key_and_value\":{}}}",
            names / n,
            std::mem::size_of::<u64>() + std::mem::size_of::<Option<u64>>()
        );
    }
}
