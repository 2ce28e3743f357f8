//! The reference service's HTTP layer on hyper 1.x: JWT authentication, the routes, JSON
//! errors and Prometheus metrics.
//!
//! Depend on it from the binary that composes the service. It codes against
//! `nearcache_store::Store` (so a real cache, the pass-through stub or a mock can be plugged
//! in) and `nearcache_pg::UserRepo`; it knows nothing of moka or of the listener, whose state
//! reaches it through the [`Probe`] trait.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 `{"status":"ok","cache":…}`, 503 while not ready |
//! | `GET /metrics` | Prometheus text |
//! | `GET /me` | the user with its organization |
//! | `PATCH /me` | `{"name"?, "email"?}`; 400 invalid, 409 email taken |
//! | `GET /me/organization` | the organization |
//!
//! Every error is JSON `{"error": code, "message": text}`. Every authentication failure is the
//! same 401, whatever the cause; the cause goes to the log at debug level only.

mod error;
mod metrics;
mod routes;
mod server;

pub use nearcache_tower::{AuthConfig, AuthConfigError, AuthError, Key};

/// Verifies bearer tokens whose `sub` is a user id (`nearcache_tower`'s, for this service).
pub type Authenticator = nearcache_tower::Authenticator<nearcache_pg::UserId>;
pub use error::ApiError;
pub use metrics::Metrics;
pub use routes::{handle, AppState, CacheState, CachedPrincipal, Health, PrincipalStore, Probe};
pub use server::{serve, ServeConfig};

#[cfg(test)]
mod tests;
