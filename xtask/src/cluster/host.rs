//! The host the cluster runs on: where the server binaries are, who may run them, free ports
//! and live processes.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::ClusterError;

/// Finds the directory holding `initdb` and `pg_ctl`: `NEARCACHE_PG_BIN`, then PATH, then the
/// newest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("NEARCACHE_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Some(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                // Resolve symlinks such as /usr/local/bin/initdb so that the sibling binaries
                // (postgres, pg_ctl) come from one installation.
                let real = fs::canonicalize(dir.join("initdb")).ok()?;
                return real.parent().map(Path::to_path_buf);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

pub(super) fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

pub(super) fn free_port() -> Result<u16, ClusterError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn process_alive(pid: u32) -> bool {
    // The third field of /proc/<pid>/stat is the state; Z and X are dead processes.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub(super) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(super) fn postgres_can_reach(dir: &Path) -> bool {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            return false;
        }
    }
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(&probe)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
