//! Instances of the service as child processes, for the demo and the benchmarks: building the
//! binary, choosing ports, starting and stopping (SIGTERM on drop).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::seed::SECRET;

/// `port` if it is free, else any free port.
pub fn port_near(port: u16) -> Result<u16> {
    if port != 0 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
        return Ok(port);
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Builds the server binary; returns its path.
pub fn build_server(release: bool) -> Result<PathBuf> {
    build("nearcache-server", release)
}

/// Builds the binary of `package` (named like it); returns its path.
pub fn build(package: &str, release: bool) -> Result<PathBuf> {
    let mut cmd = crate::cargo();
    cmd.args(["build", "--quiet", "-p", package]);
    if release {
        cmd.arg("--release");
    }
    crate::check(
        &mut cmd,
        &format!(
            "cargo build{} ({package})",
            if release { " --release" } else { "" }
        ),
    )?;
    let dir = if release { "release" } else { "debug" };
    Ok(crate::target_dir().join(dir).join(package))
}

/// A running instance of the server, stopped with SIGTERM when dropped.
pub struct Instance {
    /// Its name, in logs and file names.
    pub name: String,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    child: Child,
}

impl Instance {
    /// Starts `binary` as `name` on `url` and `port`, with `flags`.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn start(
        binary: &PathBuf,
        name: &str,
        url: &str,
        port: u16,
        flags: &[&str],
    ) -> Result<Self> {
        let dir = crate::workspace_root().join("target").join("instances");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(flags)
            .env("DATABASE_URL", url)
            .env("NEARCACHE_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            name: name.into(),
            port,
            log,
            child,
        })
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|status| {
            format!(
                "{} exited ({status}); see {}",
                self.name,
                self.log.display()
            )
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until /healthz answers 200 with the cache in `mode`.
    pub async fn ready(&mut self, client: &reqwest::Client, mode: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            if let Ok(r) = client.get(self.url("/healthz")).send().await {
                if r.status() == 200 {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    if body["cache"] == mode {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after 30 s; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait (SIGKILL after 15 s).
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}
