//! `nearcache-harness`: the benchmark (`bench`) and the soak (`soak`), a package of their own so
//! that `cargo xtask` builds in seconds; `cargo xtask bench` and `cargo xtask soak` run this in
//! a release build. The database, the server processes and the seed data come from the xtask
//! library, as `cargo xtask db` and the demo use them.

mod bench;
mod soak;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
pub(crate) use xtask::{
    cargo, check, choose_source, cluster, database, instance, migrate, runtime, seed,
    workspace_root,
};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "nearcache's benchmark and soak")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure the system (release build, wrk) and write a report under target/.
    Bench(bench::Args),
    /// Run two release instances for minutes or hours under load, writes and faults; check
    /// that answers stay fresh and memory, sizes and latency stay flat (exit 1 otherwise).
    Soak(soak::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Bench(args) => bench::run(args),
        Cmd::Soak(args) => soak::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nearcache-harness: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
