//! A streaming standby of a cluster, and its promotion: for failover tests.

use std::fs;
use std::path::PathBuf;

use super::host::free_port;
use super::{Cluster, ClusterError};

impl Cluster {
    /// A physical standby of this running cluster, in `dir`: a base backup over streaming
    /// replication (`pg_basebackup -R`, so it follows this cluster as its primary), on a port
    /// of its own, started. Promote it with [`Cluster::promote`].
    ///
    /// # Errors
    /// When the backup or the start fail; the message carries their output.
    pub fn standby(&self, dir: impl Into<PathBuf>) -> Result<Cluster, ClusterError> {
        let standby = Cluster::new(dir)?;
        fs::create_dir_all(&standby.dir)?;
        fs::write(standby.dir.join("port"), format!("{}\n", free_port()?))?;
        standby.chown()?;
        standby.run_ok(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port()?.to_string(),
                "-U",
                "nearcache",
                "-D",
                &standby.data().to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            "pg_basebackup",
        )?;
        standby.start()?;
        Ok(standby)
    }

    /// Promotes a standby to a primary (`pg_ctl promote`), waiting until it takes writes.
    ///
    /// # Errors
    /// When pg_ctl fails (not a standby, not running).
    pub fn promote(&self) -> Result<(), ClusterError> {
        self.run_ok(
            "pg_ctl",
            &[
                "promote",
                "-w",
                "-t",
                "30",
                "-D",
                &self.data().to_string_lossy(),
            ],
            "pg_ctl promote",
        )
    }
}
