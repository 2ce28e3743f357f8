//! Tidy checks of the workspace itself: file headers and dependency directions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let root = xtask::workspace_root();
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! doc: {missing:?}"
    );
}

#[test]
fn dependencies_point_inward() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(xtask::workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Normal (non-dev) dependencies of each package.
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pkg in meta["packages"].as_array().unwrap() {
        let names = pkg["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        deps.insert(pkg["name"].as_str().unwrap().to_string(), names);
    }
    let ours = |p: &str| -> BTreeSet<String> {
        deps[p]
            .iter()
            .filter(|d| d.starts_with("nearcache"))
            .cloned()
            .collect()
    };
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| s.to_string()).collect() };
    assert_eq!(ours("nearcache-store"), set(&[]));
    assert_eq!(
        ours("nearcache"),
        set(&["nearcache-store", "nearcache-source"])
    );
    assert_eq!(
        ours("nearcache-pg"),
        set(&["nearcache-store", "nearcache-sql"])
    );
    // nearcache's SQL has no opinion about a schema, and no part of nearcache to bring.
    assert_eq!(ours("nearcache-sql"), set(&[]));
    assert_eq!(ours("nearcache-source"), set(&[]));
    // The Postgres sources share their connection settings (URL, TLS), nothing else.
    assert_eq!(ours("nearcache-pgconn"), set(&[]));
    for source in ["nearcache-listener", "nearcache-wal"] {
        assert_eq!(ours(source), set(&["nearcache-source", "nearcache-pgconn"]));
    }
    // The NATS source knows the relay's wire format (its own) and nothing of Postgres.
    assert_eq!(ours("nearcache-nats"), set(&["nearcache-source"]));
    // The relay composes a Postgres source with the wire format; no cache.
    assert_eq!(
        ours("nearcache-relay"),
        set(&[
            "nearcache-source",
            "nearcache-nats",
            "nearcache-wal",
            "nearcache-listener"
        ])
    );
    assert_eq!(
        ours("nearcache-http"),
        set(&["nearcache-store", "nearcache-pg", "nearcache-tower"])
    );
    // The Layer and the health routes are for any service: they know the Store and the core's
    // Monitor, and nothing of Postgres or a server.
    assert_eq!(
        ours("nearcache-tower"),
        set(&["nearcache-store", "nearcache"])
    );
    // The core does no I/O.
    for core in ["nearcache", "nearcache-store", "nearcache-source"] {
        for io in ["sqlx", "tokio-postgres", "hyper", "hyper-util"] {
            assert!(!deps[core].contains(io), "{core} depends on {io}");
        }
    }
    for (adapter, foreign) in [
        ("nearcache-pg", ["tokio-postgres", "hyper"]),
        ("nearcache-listener", ["sqlx", "hyper"]),
        ("nearcache-wal", ["sqlx", "hyper"]),
        ("nearcache-pgconn", ["sqlx", "hyper"]),
        ("nearcache-nats", ["sqlx", "tokio-postgres"]),
        ("nearcache-relay", ["sqlx", "moka"]),
        ("nearcache-http", ["tokio-postgres", "moka"]),
        ("nearcache-tower", ["sqlx", "tokio-postgres"]),
        ("nearcache-tower", ["moka", "hyper"]),
    ] {
        for f in foreign {
            assert!(!deps[adapter].contains(f), "{adapter} depends on {f}");
        }
    }
}

/// The README's downstream section is the example's code: every line of its Rust block is a
/// line of `examples/axum-accounts/src/lib.rs`.
#[test]
fn the_readme_shows_the_examples_code() {
    let root = xtask::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("examples/axum-accounts/src/lib.rs")).unwrap();
    let section = &readme[readme.find("## Caching your own tables").unwrap()..];
    let start = section.find("```rust\n").expect("a rust block") + 8;
    let block = &section[start..start + section[start..].find("```").unwrap()];
    assert!(block.lines().count() > 20, "the block holds the code");
    let lines: std::collections::HashSet<&str> = example.lines().collect();
    for line in block.lines() {
        assert!(
            lines.contains(line),
            "README line not in the example: {line:?}"
        );
    }
}
