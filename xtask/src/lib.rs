//! Developer tooling of the nearcache workspace, as a library so that the cross-crate tests can
//! start and break a private PostgreSQL cluster with the same code that `cargo xtask db` uses.
//!
//! Nothing outside `xtask/` and `tests/` should depend on this crate.

mod cluster;

pub use cluster::{find_pg_bin, Cluster, ClusterError};

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
