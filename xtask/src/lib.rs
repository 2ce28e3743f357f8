//! Developer tooling of the nearcache workspace, as a library so that the cross-crate tests can
//! start and break a private PostgreSQL cluster with the same code that `cargo xtask db` uses.
//!
//! Nothing outside `xtask/` and `tests/` should depend on this crate.

mod cluster;
pub mod instance;
pub mod proxy;
pub mod seed;

pub use cluster::{find_pg_bin, Cluster, ClusterError};

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// The root of the checkout this command runs in, found at run time from the current folder
/// up (see [`find_workspace_root`]). Not where the binary was compiled: two checkouts that share
/// one `CARGO_TARGET_DIR` share the xtask binary too, and each must act on its own cluster.
///
/// # Panics
/// Outside a nearcache checkout, where `cargo xtask` does not resolve either.
pub fn workspace_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let here = std::env::current_dir().expect("the current folder");
        find_workspace_root(&here).unwrap_or_else(|| {
            panic!(
                "{} is not inside a nearcache checkout (a Cargo.toml with [workspace] beside xtask/)",
                here.display()
            )
        })
    })
    .clone()
}

/// The nearest folder from `start` up that holds a workspace `Cargo.toml` and `xtask/`.
pub fn find_workspace_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| {
            dir.join("xtask").join("Cargo.toml").is_file()
                && std::fs::read_to_string(dir.join("Cargo.toml"))
                    .is_ok_and(|manifest| manifest.contains("[workspace]"))
        })
        .map(Path::to_path_buf)
}

/// Where cargo puts what it builds for this checkout: `CARGO_TARGET_DIR` or the configured
/// `build.target-dir` when set (perhaps shared with other checkouts), else `target/`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|meta| meta["target_directory"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| root.join("target"))
}

/// The project's cluster, kept in target/nearcache-pg.
pub fn cluster() -> Result<Cluster, ClusterError> {
    Cluster::new(workspace_root().join("target").join("nearcache-pg"))
}

/// The database to use: `DATABASE_URL` when set (nothing is started), else the ephemeral
/// cluster, started if needed. Returns the URL and whether this call started a server.
pub fn database() -> Result<(String, Option<Cluster>)> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return Ok((url, None));
        }
    }
    let cluster = cluster()?;
    let started = cluster.up()?;
    let url = cluster.url()?;
    Ok((url, started.then_some(cluster)))
}

/// Applies the migrations of `sql/` to the database at `url`.
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub fn migrate(url: &str) -> Result<()> {
    runtime()?.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        nearcache_pg::MIGRATOR
            .run(&pool)
            .await
            .context("applying the migrations of sql/")?;
        pool.close().await;
        Ok(())
    })
}

/// Chooses which source the database's writes are for (`nearcache_set_source`: `auto`, `wal`,
/// `notify` or `both`), attaching its tables again accordingly.
pub async fn choose_source(url: &str, source: &str) -> Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    sqlx::query("SELECT nearcache_set_source($1)")
        .bind(source)
        .execute(&pool)
        .await
        .with_context(|| format!("nearcache_set_source('{source}')"))?;
    pool.close().await;
    Ok(())
}

/// A two-thread tokio runtime for the commands' async work.
///
/// # Errors
/// When the runtime cannot be built.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// `cargo` (the one running this command), in the checkout's root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd`, saying `what` first; an error unless it succeeds.
///
/// # Errors
/// When it cannot run or fails.
pub fn check(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("==> {what}");
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
