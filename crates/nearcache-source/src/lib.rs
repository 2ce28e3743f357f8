//! The vocabulary every invalidation source shares: the [`Handler`] a source drives, the
//! [`SourceStatus`] it reports for health checks and metrics, and [`supervise`], the
//! bypass-and-reconnect loop around a source's sessions.
//!
//! Depend on it to write a handler (the glue between a source and your caches) or a source.
//! The sources themselves (`nearcache-listener` for LISTEN/NOTIFY, `nearcache-wal` for logical
//! decoding) depend on it and on nothing else of nearcache, so a handler written once works
//! with any of them and switching sources is one call.

mod exposition;
mod handler;
mod status;
mod supervise;

pub use exposition::{Exposition, MetricKind};
pub use handler::{Handler, Handlers};
pub use status::{Metric, SourceState, SourceStatus, StatusSnapshot};
pub use supervise::{explain, in_flight, sleep_until_opt, supervise, AbortOnDrop, Timer};
