//! `cargo xtask`: the workspace's tooling. Run `cargo xtask --help`.

mod demo;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
pub(crate) use xtask::{cargo, check, cluster, database, instance, migrate, runtime, seed};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "nearcache's tooling")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage the ephemeral PostgreSQL cluster under target/.
    Db {
        #[command(subcommand)]
        action: DbCmd,
    },
    /// Bring the database up, migrate, run every test of the workspace, stop what was started.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// What CI runs: fmt check, clippy with warnings denied, `cargo package` of every
    /// publishable crate, then `test`.
    Ci,
    /// Run the whole system: database, seed data, two instances, tokens and example requests.
    Demo(demo::Args),
    /// Measure the system (release build, wrk) and write a report under target/. Runs the
    /// harness (`nearcache-harness bench`); `cargo xtask bench --help` lists its options.
    #[command(disable_help_flag = true)]
    Bench {
        /// The harness' options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run two release instances for minutes or hours under load, writes and faults; check
    /// that answers stay fresh and memory, sizes and latency stay flat (exit 1 otherwise).
    /// Runs the harness (`nearcache-harness soak`).
    #[command(disable_help_flag = true)]
    Soak {
        /// The harness' options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DbCmd {
    /// Create and start the cluster if needed; print its URL.
    Up,
    /// Stop the cluster.
    Down,
    /// Delete the cluster, then create, start and migrate a new one.
    Reset,
    /// Apply the migrations of sql/.
    Migrate,
    /// Print the database URL.
    Url,
    /// Say whether the cluster runs, where and on which port.
    Status,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Db { action } => db(action),
        Cmd::Test { args } => test(&args),
        Cmd::Ci => ci(),
        Cmd::Demo(args) => demo::run(args),
        Cmd::Bench { args } => harness("bench", &args),
        Cmd::Soak { args } => harness("soak", &args),
    }
}

/// Runs the harness, a package of its own so that this command builds in seconds, in a
/// release build (benchmarks measure optimised code: the in-process sources, relay and
/// instances of some of them are the harness' own).
fn harness(command: &str, args: &[String]) -> Result<()> {
    eprintln!("==> cargo build --release (nearcache-harness)");
    check(
        cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "--package",
                "nearcache-harness",
                "--",
                command,
            ])
            .args(args),
        &format!("nearcache-harness {command}"),
    )
}

fn db(action: DbCmd) -> Result<()> {
    let external = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    match action {
        DbCmd::Up => {
            let (url, _) = database()?;
            if external.is_some() {
                eprintln!("DATABASE_URL is set: using it, nothing started");
            }
            println!("{url}");
        }
        DbCmd::Down => {
            if cluster()?.down()? {
                eprintln!("stopped");
            } else {
                eprintln!("not running");
            }
        }
        DbCmd::Reset => {
            if external.is_some() {
                bail!("DATABASE_URL is set: refusing to reset a database nearcache did not make");
            }
            let c = cluster()?;
            c.destroy()?;
            c.up()?;
            migrate(&c.url()?)?;
            println!("{}", c.url()?);
        }
        DbCmd::Migrate => {
            let (url, _) = database()?;
            migrate(&url)?;
            eprintln!("migrated {url}");
        }
        DbCmd::Url => match external {
            Some(url) => println!("{url}"),
            None => println!(
                "{}",
                cluster()?
                    .url()
                    .context("no cluster yet: run `cargo xtask db up`")?
            ),
        },
        DbCmd::Status => {
            if let Some(url) = external {
                println!("DATABASE_URL is set: {url}");
                return Ok(());
            }
            let c = cluster()?;
            let state = if c.is_running() { "running" } else { "stopped" };
            let port = c
                .port()
                .map(|p| p.to_string())
                .unwrap_or_else(|_| "-".into());
            println!("{state}\nfolder: {}\nport: {port}", c.dir().display());
            if let Ok(url) = c.url() {
                println!("url: {url}");
            }
        }
    }
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    let (url, started) = database()?;
    let result = (|| {
        migrate(&url)?;
        let mut cmd = cargo();
        // Extra arguments before a `--` go to cargo, after it to the test binaries; the
        // binaries also get --show-output, so that what the randomized checker ran is shown.
        let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
        let (cargo_args, test_args) = (&args[..split], args.get(split + 1..).unwrap_or(&[]));
        cmd.args(["test", "--workspace", "--all-features", "--no-fail-fast"])
            .args(cargo_args)
            .args(["--", "--show-output"])
            .args(test_args)
            .env("DATABASE_URL", &url);
        if let Some(bin) = xtask::find_pg_bin() {
            cmd.env("NEARCACHE_PG_BIN", bin);
        }
        run_tests(&mut cmd)?;
        soak_minute(args, &url)
    })();
    if let Some(cluster) = started {
        if let Err(e) = cluster.down() {
            eprintln!("xtask: could not stop the cluster: {e}");
        }
    }
    result
}

/// The one-minute soak that closes `test`: two release instances under load, writes and
/// faults (see `cargo xtask soak`). It restarts the project's cluster, so it is skipped when
/// `DATABASE_URL` names another database, and when a filter picks some tests only.
fn soak_minute(args: &[String], url: &str) -> Result<()> {
    if !args.is_empty() {
        eprintln!("==> soak skipped: a filter was given");
        return Ok(());
    }
    if cluster()?.url().ok().as_deref() != Some(url) {
        eprintln!("==> soak skipped: DATABASE_URL names a database nearcache did not make");
        return Ok(());
    }
    harness("soak", &["--minutes".into(), "1".into()])
}

/// Runs `cargo test`, passing its output through, and closes with one line that sums up every
/// test binary's result (cargo prints one result line per binary, the last often of an empty
/// doc-test run).
fn run_tests(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("==> cargo test --workspace");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// `cargo package` serves the workspace's crates to each other from a temporary local registry,
/// and cargo takes a registry crate of a given version to be immutable: an earlier run's
/// unpacked copy (under `$CARGO_HOME/registry/src/<that registry>/`) and its build (in the
/// target dir) are reused as they are, so a crate verified after a change of a crate it
/// depends on would build against the old one. Forget the copies, and verify in a target dir
/// of its own, emptied first; returns it.
fn fresh_package_target() -> std::path::PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    if let Some(Ok(registries)) = home.map(|h| std::fs::read_dir(h.join("registry").join("src"))) {
        for registry in registries.flatten() {
            if registry.file_name().to_string_lossy().starts_with("index.") {
                continue; // crates.io and other real registries
            }
            for unpacked in std::fs::read_dir(registry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if unpacked
                    .file_name()
                    .to_string_lossy()
                    .starts_with("nearcache")
                {
                    let _ = std::fs::remove_dir_all(unpacked.path());
                }
            }
        }
    }
    let dir = xtask::target_dir().join("package-verify");
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn ci() -> Result<()> {
    check(
        cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check",
    )?;
    check(
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy -D warnings",
    )?;
    // Every publishable crate packages and builds from its package alone, its path
    // dependencies resolved as a registry would serve them.
    let verify_in = fresh_package_target();
    check(
        cargo()
            .arg("package")
            .arg("--target-dir")
            .arg(&verify_in)
            .args([
                "--workspace",
                "--exclude",
                "xtask",
                "--exclude",
                "nearcache-tests",
                "--exclude",
                "nearcache-example-axum",
                "--exclude",
                "nearcache-harness",
                "--allow-dirty",
            ]),
        "cargo package (publish dry run)",
    )?;
    // A whole build of its own (4 GB): not kept beside the test build.
    let _ = std::fs::remove_dir_all(&verify_in);
    test(&[])
}
