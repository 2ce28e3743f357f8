//! The cross-crate test binary: the listener against a real Postgres, the service over real
//! TCP, several instances kept coherent, a randomized staleness checker, and tidy checks.

mod checker;
mod cluster;
mod coherence;
mod listener;
mod service;
mod support;
mod tidy;
mod wal;
