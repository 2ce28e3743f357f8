//! A warm start (`--warm-file`): at shutdown, the ids of the principals cached, one per line;
//! at start, those ids loaded again through the cache once its source is coherent, at
//! `--warm-rate`. A missing file is a cold start; an unreadable one, or lines that are not
//! ids, a warning: never a failed start.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use nearcache::Cache;
use nearcache_http::CachedPrincipal;
use nearcache_pg::{PgUserRepo, UserId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The most ids written: a bound on the file and on the work of the next start.
const MOST: usize = 1_000_000;

/// The ids in `path`; none (with a warning) when it cannot be read.
pub(crate) fn read(path: &Path) -> Vec<UserId> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(file = %path.display(), "warm start: no file yet, starting cold");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "warm start: cannot read the file, starting cold");
            return Vec::new();
        }
    };
    let (mut ids, mut bad) = (Vec::new(), 0usize);
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(MOST) {
        match line.trim().parse::<UserId>() {
            Ok(id) => ids.push(id),
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(file = %path.display(), skipped = bad, "warm start: lines that are not user ids were skipped");
    }
    ids
}

/// The ids of the principals in `cache`, at most [`MOST`].
pub(crate) fn ids(cache: &Cache<UserId, Arc<CachedPrincipal>>) -> Vec<UserId> {
    cache.keys(MOST)
}

/// Writes `ids` to `path` (through a file beside it, renamed into place, so that a crash
/// leaves the old file or the new one); returns how many.
pub(crate) fn write(path: &Path, ids: &[UserId]) -> std::io::Result<usize> {
    let partial = path.with_extension("partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    for id in ids {
        writeln!(out, "{id}")?;
    }
    out.into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()?;
    std::fs::rename(&partial, path)?;
    Ok(ids.len())
}

/// Loads `ids` into `cache` at `rate` a second once it is coherent, until done or `stop`.
pub(crate) fn spawn(
    cache: Cache<UserId, Arc<CachedPrincipal>>,
    repo: PgUserRepo,
    ids: Vec<UserId>,
    rate: f64,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let load = crate::handler::loader(repo);
        let n = ids.len();
        let started = std::time::Instant::now();
        tokio::select! {
            loaded = cache.warm(ids, rate, load) => {
                tracing::info!(ids = n, loaded, seconds = started.elapsed().as_secs_f64(), "warm start done");
            }
            () = stop.cancelled() => {}
        }
    })
}
