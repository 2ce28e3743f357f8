//! Authentication through a nearcache cache for tower and axum services: [`AuthLayer`]
//! verifies the request's `Authorization: Bearer <jwt>`, resolves the principal the token's
//! `sub` names through a [`Store`](nearcache_store::Store) (a nearcache `Cache` in production,
//! the pass-through store in tests), and puts it into the request's extensions, where an axum
//! handler takes it with `Extension<P>`. A request without a valid token, or whose principal
//! does not exist, gets `401 {"error":"unauthorized",…}` and never reaches the service; one
//! whose principal cannot be loaded gets `503 {"error":"unavailable",…}`.
//!
//! ```
//! use std::sync::Arc;
//! use nearcache_store::{Fill, LoadError, PassThrough, Store, Tag};
//! use nearcache_tower::{AuthConfig, AuthLayer, Authenticator, Key};
//!
//! #[derive(Clone)]
//! struct Account { id: i64, name: String }
//!
//! // In production a nearcache `Cache` kept coherent by a source; here the pass-through store.
//! let store: Arc<dyn Store<i64, Account>> = Arc::new(PassThrough::new());
//! let auth = Authenticator::<i64>::new(&AuthConfig::new(Key::Secret(b"secret".to_vec()))).unwrap();
//! let layer = AuthLayer::through_store(auth, store, |id: i64| async move {
//!     // Your query; tag the value with the rows it was built from.
//!     Ok::<_, LoadError>(Fill::found(Account { id, name: "Acme".into() }).with_tag(Tag::row("accounts", id)))
//! });
//! // axum: Router::new().route("/account", get(handler)).layer(layer)
//! # let _ = layer;
//! ```

mod auth;
mod health;
mod layer;

pub use auth::{AuthConfig, AuthConfigError, AuthError, Authenticator, Key};
pub use health::HealthRoutes;
pub use layer::{AuthLayer, AuthService, Resolve, Through};
