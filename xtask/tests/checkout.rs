//! One xtask binary, two checkouts (what a `CARGO_TARGET_DIR` shared between checkouts gives):
//! run in the other checkout, `cargo xtask db status` speaks of that checkout's cluster, not of
//! the one it was built in.

use std::fs;
use std::process::Command;

#[test]
fn the_binary_acts_on_the_checkout_it_runs_in() {
    let other = std::env::temp_dir().join(format!("nearcache-other-{}", std::process::id()));
    fs::create_dir_all(other.join("xtask")).unwrap();
    fs::write(other.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
    fs::write(other.join("xtask").join("Cargo.toml"), "[package]\n").unwrap();

    let status = |dir: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["db", "status"])
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let folder = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("folder: "))
            .expect("a folder line")
            .to_string()
    };
    let theirs = status(&other);
    let ours = status(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    assert_ne!(folder(&theirs), folder(&ours), "{theirs}\n{ours}");
    assert!(
        theirs.starts_with("stopped"),
        "nothing runs there: {theirs}"
    );
    fs::remove_dir_all(&other).unwrap();
}
