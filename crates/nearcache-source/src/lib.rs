//! The vocabulary every invalidation source shares: the [`Handler`] a source drives, and the
//! [`SourceStatus`] it reports for health checks and metrics.
//!
//! Depend on it to write a handler (the glue between a source and your caches) or a source.
//! The sources themselves (`nearcache-listener` for LISTEN/NOTIFY, `nearcache-wal` for logical
//! decoding) depend on it and on nothing else of nearcache, so a handler written once works
//! with any of them and switching sources is one call.

mod handler;
mod status;

pub use handler::Handler;
pub use status::{Metric, SourceState, SourceStatus, StatusSnapshot};
