//! Developer tooling of the nearcache workspace, as a library so that the cross-crate tests can
//! start and break a private PostgreSQL cluster with the same code that `cargo xtask db` uses.
//!
//! Nothing outside `xtask/` and `tests/` should depend on this crate.

mod cluster;

pub use cluster::{find_pg_bin, Cluster, ClusterError};

/// The workspace root, from where this crate was compiled.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
