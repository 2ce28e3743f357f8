//! The checkout is found at run time.

use std::fs;

use super::find_workspace_root;

#[test]
fn the_checkout_is_the_one_the_command_runs_in_not_the_one_it_was_built_in() {
    // A second checkout elsewhere: a workspace manifest beside xtask/.
    let other = std::env::temp_dir().join(format!("nearcache-checkout-{}", std::process::id()));
    fs::create_dir_all(other.join("xtask")).unwrap();
    fs::create_dir_all(other.join("crates").join("deep")).unwrap();
    fs::write(other.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
    fs::write(other.join("xtask").join("Cargo.toml"), "[package]\n").unwrap();

    let found = find_workspace_root(&other.join("crates").join("deep"));
    assert_eq!(found.as_deref(), Some(other.as_path()));
    // This checkout, from one of its own folders.
    let here = find_workspace_root(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(here.join("xtask").join("src").join("tests.rs").is_file());
    assert_ne!(here, other);
    // Outside any checkout: none.
    assert_eq!(find_workspace_root(std::path::Path::new("/")), None);
    fs::remove_dir_all(&other).unwrap();
}
