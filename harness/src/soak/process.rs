//! What the operating system says about an instance: resident memory, open file descriptors,
//! and how many of them are connections to Postgres (read from /proc; Linux only).

use std::collections::HashSet;

use anyhow::{Context, Result};

/// One look at a process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Process {
    /// Resident set size, bytes.
    pub(crate) rss: u64,
    /// Open file descriptors, the Postgres connections included.
    pub(super) fds: u64,
    /// TCP connections to the database's port.
    pub(super) pg_connections: u64,
}

pub(crate) fn look(pid: u32, pg_port: u16) -> Result<Process> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the instance exited?)"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/<pid>/status")?
        * 1024;
    let mut sockets = HashSet::new();
    let mut fds = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(fd) = fd else { continue };
        fds += 1;
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                sockets.insert(inode.to_string());
            }
        }
    }
    let mut pg_connections = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        pg_connections += connections_to(&text, pg_port, &sockets);
    }
    Ok(Process {
        rss,
        fds,
        pg_connections,
    })
}

/// Rows of a /proc/net/tcp table whose remote port is `port` and whose socket is one of
/// `ours` (inodes).
fn connections_to(table: &str, port: u16, ours: &HashSet<String>) -> u64 {
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            cols.len() > 9 && cols[2].ends_with(&port) && ours.contains(cols[9])
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_matched_by_remote_port_and_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:15E0 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1
   2: 0100007F:A1B3 0100007F:15E0 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1
   3: 0100007F:A1B4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1";
        let ours: HashSet<String> = ["111", "222", "444"].map(String::from).into();
        // 0x15E0 = 5600: only 222 is ours and goes there (333 is another process').
        assert_eq!(connections_to(table, 5600, &ours), 1);
        assert_eq!(connections_to(table, 8080, &ours), 1);
    }

    #[test]
    fn this_process_can_be_looked_at() {
        let me = look(std::process::id(), 1).unwrap();
        assert!(me.rss > 1 << 20 && me.fds >= 3, "{me:?}");
    }
}
