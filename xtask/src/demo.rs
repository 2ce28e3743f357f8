//! `cargo xtask demo`: the whole system on this machine.

use anyhow::Result;

/// Options of the demo.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> Result<()> {
    let (url, _) = crate::database()?;
    crate::migrate(&url)?;
    println!("database up and migrated: {url}");
    Ok(())
}
