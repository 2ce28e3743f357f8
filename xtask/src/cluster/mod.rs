//! An ephemeral PostgreSQL cluster made from the system's server binaries.
//!
//! The cluster lives in one folder (data, log, port file) and listens on 127.0.0.1 on a port of
//! its own, chosen once when the cluster is created, so it never touches another server. As root,
//! `initdb` refuses to run, so the folder and the server belong to the `postgres` user and every
//! server binary is run through `runuser`.

mod host;
mod standby;

pub use host::find_pg_bin;
use host::{free_port, is_root, output_text, postgres_can_reach, process_alive};

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Why the cluster could not be managed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`pg_ctl` on PATH nor under `/usr/lib/postgresql/*/bin`.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under \
         /usr/lib/postgresql/*/bin: install them, e.g. `apt-get install -y postgresql`"
    )]
    NoBinaries,
    /// A server binary ran and failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was run.
        what: String,
        /// Its output, or the reason it did not start.
        detail: String,
    },
    /// A file of the cluster's folder could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// An ephemeral cluster kept in one folder.
#[derive(Debug, Clone)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

impl Cluster {
    /// A cluster kept in `dir` (created on first start).
    ///
    /// # Errors
    /// [`ClusterError::NoBinaries`] when the server binaries are missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, ClusterError> {
        let bin = find_pg_bin().ok_or(ClusterError::NoBinaries)?;
        let as_postgres = is_root();
        let mut dir: PathBuf = dir.into();
        if as_postgres && !postgres_can_reach(dir.parent().unwrap_or(Path::new("/"))) {
            // The checkout sits where the postgres user cannot go (say, under /root): keep the
            // cluster in /tmp instead, under a name derived from the intended folder.
            let tag = dir.to_string_lossy().bytes().fold(0u64, |h, b| {
                h.wrapping_mul(1_099_511_628_211).wrapping_add(u64::from(b))
            });
            dir = std::env::temp_dir().join(format!("nearcache-pg-{tag:016x}"));
        }
        Ok(Self {
            dir,
            bin,
            as_postgres,
        })
    }

    /// The folder holding the cluster.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The port, chosen when the cluster was created.
    ///
    /// # Errors
    /// When the cluster was never created.
    pub fn port(&self) -> Result<u16, ClusterError> {
        let text = fs::read_to_string(self.dir.join("port"))?;
        text.trim().parse().map_err(|_| ClusterError::Command {
            what: "reading the port file".into(),
            detail: format!("{text:?} is not a port"),
        })
    }

    /// The URL of the `nearcache` database as its superuser.
    ///
    /// # Errors
    /// When the cluster was never created.
    pub fn url(&self) -> Result<String, ClusterError> {
        Ok(format!(
            "postgres://nearcache@127.0.0.1:{}/nearcache",
            self.port()?
        ))
    }

    /// Whether a postmaster of this cluster is running: the pid of `postmaster.pid` names a live
    /// process that is not a zombie. (`pg_ctl status` calls a killed but not yet reaped
    /// postmaster running.)
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(process_alive)
    }

    /// The pid recorded in `postmaster.pid`, if any.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Creates the cluster if needed and starts it if it is not running. Idempotent; recovers
    /// from a postmaster killed with SIGKILL (stale pid file, orphaned backends).
    ///
    /// Returns whether this call started the server.
    ///
    /// # Errors
    /// When initdb or pg_ctl fail; the message carries their output and the log's tail.
    pub fn up(&self) -> Result<bool, ClusterError> {
        if !self.data().join("PG_VERSION").exists() {
            self.init()?;
            self.start()?;
            self.create_database()?;
            return Ok(true);
        }
        if self.is_running() {
            return Ok(false);
        }
        self.start()?;
        Ok(true)
    }

    fn start(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.pg_ctl(&[
                "start",
                "-w",
                "-t",
                "30",
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.log().to_string_lossy(),
                "-o",
                &format!("-p {} -k ''", self.port()?),
            ])?;
            if out.status.success() {
                return Ok(());
            }
            // After a SIGKILL of the postmaster its backends may still hold the shared memory
            // for a moment: they notice the postmaster's death and exit on their own.
            if Instant::now() > deadline {
                return Err(ClusterError::Command {
                    what: "pg_ctl start".into(),
                    detail: format!("{}\n{}", output_text(&out), self.log_tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Appends `settings` (lines of `name = value`) to the cluster's postgresql.conf; they take
    /// effect at the next start. The cluster must have been created (`up`).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn configure(&self, settings: &str) -> Result<(), ClusterError> {
        let path = self.data().join("postgresql.conf");
        let mut text = fs::read_to_string(&path)?;
        text.push('\n');
        text.push_str(settings);
        text.push('\n');
        fs::write(&path, text)?;
        Ok(())
    }

    /// Makes the server accept TLS connections only, with the certificate chain `cert_pem` and
    /// its private key `key_pem`, written into the data folder; a connection without TLS is
    /// refused (pg_hba `hostssl` lines only). Takes effect at the next start.
    ///
    /// # Errors
    /// When the files cannot be written or handed to the postgres user.
    pub fn serve_tls_only(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClusterError> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data();
        let key = data.join("server.key");
        fs::write(data.join("server.crt"), cert_pem)?;
        fs::write(&key, key_pem)?;
        // Postgres refuses a key others may read.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        self.set_hba(
            "hostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
        )?;
        self.give_to_postgres(false, &[&data.join("server.crt"), &key], "the TLS files")?;
        self.configure("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'")
    }

    /// Replaces `pg_hba.conf` with `lines`: who may connect, and how they authenticate. Takes
    /// effect at the next start or `SELECT pg_reload_conf()`.
    ///
    /// # Errors
    /// When the file cannot be written or handed to the postgres user.
    pub fn set_hba(&self, lines: &str) -> Result<(), ClusterError> {
        let path = self.data().join("pg_hba.conf");
        fs::write(&path, lines)?;
        self.give_to_postgres(false, &[&path], "pg_hba.conf")
    }

    /// Stops the server (fast shutdown) if it runs.
    ///
    /// # Errors
    /// When pg_ctl fails to stop a running server.
    pub fn down(&self) -> Result<bool, ClusterError> {
        if !self.is_running() {
            return Ok(false);
        }
        self.run_pg_ctl_stop("fast")?;
        Ok(true)
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    ///
    /// # Errors
    /// When pg_ctl fails.
    pub fn crash(&self) -> Result<(), ClusterError> {
        self.run_pg_ctl_stop("immediate")
    }

    fn run_pg_ctl_stop(&self, mode: &str) -> Result<(), ClusterError> {
        self.run_ok(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-m",
                mode,
                "-D",
                &self.data().to_string_lossy(),
            ],
            &format!("pg_ctl stop -m {mode}"),
        )
    }

    /// Stops the server and deletes the folder.
    ///
    /// # Errors
    /// When the server cannot be stopped or the folder removed.
    pub fn destroy(&self) -> Result<(), ClusterError> {
        self.down()?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)?;
        }
        Ok(())
    }

    fn init(&self) -> Result<(), ClusterError> {
        fs::create_dir_all(&self.dir)?;
        let port = free_port()?;
        fs::write(self.dir.join("port"), format!("{port}\n"))?;
        self.chown()?;
        let data = self.data();
        self.run_ok(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "nearcache",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )?;
        // Settings for a throwaway test cluster: no fsync (a crash of the machine may lose
        // it, which is fine), but commits still reach the kernel before they return, so that
        // tests that crash the server (pg_ctl stop -m immediate) keep their committed data.
        // Enough connections for parallel tests; reachable on loopback only. Logical decoding
        // with room for a slot and a WAL sender per test consumer, and prepared transactions
        // for the two-phase tests. A short wal_sender_timeout: a stopping server waits that
        // long for a WAL consumer that no longer reads.
        let conf = "\n# nearcache ephemeral cluster\nlisten_addresses = '127.0.0.1'\n\
                    max_connections = 400\nfsync = off\nsynchronous_commit = on\n\
                    wal_level = logical\nmax_replication_slots = 100\nmax_wal_senders = 100\n\
                    max_prepared_transactions = 20\nwal_sender_timeout = 5s\n\
                    full_page_writes = off\nshared_buffers = 128MB\n\
                    unix_socket_directories = ''\nlog_min_messages = warning\n";
        let path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path)?;
        text.push_str(conf);
        fs::write(&path, text)?;
        Ok(())
    }

    /// Creates the database the URL names; the bootstrap role owns it.
    fn create_database(&self) -> Result<(), ClusterError> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(self.port()?.to_string())
            .args([
                "-U",
                "nearcache",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE nearcache",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(ClusterError::Command {
                what: "CREATE DATABASE nearcache".into(),
                detail: output_text(&o),
            }),
            Err(e) => Err(ClusterError::Command {
                what: "psql".into(),
                detail: e.to_string(),
            }),
        }
    }

    /// As root, gives the folder to the `postgres` user, who runs the server binaries.
    fn chown(&self) -> Result<(), ClusterError> {
        self.give_to_postgres(true, &[&self.dir], "the cluster folder")
    }

    /// As root, gives `paths` (with `recursive`, their trees) to the `postgres` user.
    fn give_to_postgres(
        &self,
        recursive: bool,
        paths: &[&Path],
        what: &str,
    ) -> Result<(), ClusterError> {
        if !self.as_postgres {
            return Ok(());
        }
        let mut chown = Command::new("chown");
        if recursive {
            chown.arg("-R");
        }
        let status = chown.arg("postgres:postgres").args(paths).status()?;
        if !status.success() {
            return Err(ClusterError::Command {
                what: format!("chown of {what} to postgres"),
                detail: status.to_string(),
            });
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, ClusterError> {
        self.run("pg_ctl", args)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args.iter().map(OsString::from));
        // Run from a folder the postgres user can read, and detach stdin.
        cmd.current_dir(&self.dir)
            .stdin(std::process::Stdio::null());
        cmd.output().map_err(|e| ClusterError::Command {
            what: exe.display().to_string(),
            detail: e.to_string(),
        })
    }

    /// Runs `program` and fails with its output, and the server log's tail, unless it
    /// succeeds.
    fn run_ok(&self, program: &str, args: &[&str], what: &str) -> Result<(), ClusterError> {
        let out = self.run(program, args)?;
        if out.status.success() {
            return Ok(());
        }
        Err(ClusterError::Command {
            what: what.into(),
            detail: format!("{}\n{}", output_text(&out), self.log_tail())
                .trim()
                .to_string(),
        })
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}
