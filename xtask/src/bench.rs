//! `cargo xtask bench`: measurements of the running system.

use anyhow::Result;

/// Options of the benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> Result<()> {
    anyhow::bail!("not yet")
}
