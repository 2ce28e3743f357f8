//! The cross-crate test binary: both invalidation sources against a real Postgres, the service over real
//! TCP, several instances kept coherent, a randomized staleness checker, and tidy checks.

// First: its macro (`for_each_source!`) is used by the modules below.
#[macro_use]
mod support;

mod audit;
mod checker;
mod cluster;
mod coherence;
mod example;
mod failover;
mod handlers;
mod listener;
mod migrations;
mod passwords;
mod property;
mod queue;
mod rechecks;
mod refresh;
mod relay;
mod secured;
mod service;
mod tidy;
mod tls;
mod values;
mod visibility;
mod wal;
mod warm;
mod writers;
