//! The Postgres side of the reference service: domain types, the [`UserRepo`] trait and its
//! sqlx implementation [`PgUserRepo`], and the migrations ([`MIGRATOR`]) that create the schema
//! and the change-notification triggers near caches listen to.
//!
//! Depend on it for the reference service's data (the HTTP layer uses its types and trait), or
//! to apply the migrations. With the `mock` feature, `MockUserRepo` is a mockall mock.
//!
//! # Notification triggers for your own tables
//!
//! nearcache's trigger functions are generic and install on any database, idempotently, without
//! the reference schema: call [`install`] (or run [`INSTALL_SQL`]'s files with `psql -1`). A
//! service of your own installs them with `nearcache-sql`, which does not bring this crate's
//! schema or its sqlx features.
//! Then attach each table you cache, naming its key column (which must be `NOT NULL`) and the
//! columns whose changes must not notify — only columns your cache never serves:
//!
//! ```sql
//! SELECT nearcache_attach('invoices', 'id', '{printed_at}');
//! ```
//!
//! Which source the database's writes are for decides whether triggers fire at all:
//! `SELECT nearcache_set_source('auto' | 'wal' | 'notify' | 'both')` (default `auto`: none
//! when `wal_level = logical`, where the WAL source needs none; triggers otherwise). Setting it
//! attaches every table again accordingly; `nearcache_attach(…, notify => true | false)`
//! decides for one table, until the next `nearcache_set_source`. Where triggers fire, every INSERT, UPDATE, DELETE and TRUNCATE
//! sends, at commit, compact JSON on the
//! database's channel (`nearcache_channel()`, default `nearcache`, changed with
//! `SELECT nearcache_set_channel('…')`; no session setting can redirect it):
//! `{"v":1,"table":"invoices","op":"update","keys":["…"]}`, or `{"v":1,"table":"invoices",
//! "op":"flush"}` after a TRUNCATE, a statement with more than 40 000 bytes of keys, or a key too
//! long for a payload. An UPDATE that changed only ignored columns, or nothing, sends nothing.
//! Each payload, measured after JSON escaping, stays under 7800 bytes, so no write ever fails
//! for its notification. The triggers fire under `session_replication_role = replica` too, and
//! an event trigger re-attaches a table after `ALTER TABLE` so that added columns are watched.
//! Prepared transactions (2PC) cannot NOTIFY: a prepared transaction that writes an attached
//! table fails at `PREPARE`. `nearcache_check(tables, channel)` lists what is wrong with an
//! installation; the listener calls it on every connection. See
//! `sql/0003_nearcache_install.sql` for the details; `nearcache_detach('invoices')` removes the
//! triggers.

pub mod check;
mod domain;
mod error;
pub mod probe;
mod repo;
pub mod tags;

pub use domain::{
    NewUser, OrgId, Organization, Principal, ProfileUpdate, User, UserId, ValidationError,
};
pub use error::RepoError;
pub use nearcache_sql::sqlx::Replans;
#[cfg(feature = "mock")]
pub use repo::MockUserRepo;
pub use repo::{PgUserRepo, UserRepo};

/// The migrations of `sql/`: the reference service's schema, nearcache's trigger functions,
/// the reference tables attached to them, and the relay probe's table ([`probe`]). A downstream service wants [`install`] instead.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./sql");

/// nearcache's trigger functions, generic and idempotent: [`nearcache_sql::INSTALL`], the
/// schema-neutral crate a service of your own depends on instead of this one.
pub const INSTALL_SQL: &str = nearcache_sql::INSTALL;

/// Installs (or reinstalls) nearcache's trigger functions on the database of `pool`, in one
/// transaction, without touching any table of yours. Attach tables afterwards with
/// `SELECT nearcache_attach(table, key_column, ignore_columns)`.
///
/// Creating the event trigger that watches columns added later needs a superuser; without one
/// the rest is installed and Postgres logs a warning.
///
/// # Errors
/// [`RepoError`] if the database refuses (for instance, a role that may not create functions).
pub async fn install(pool: &sqlx::PgPool) -> Result<(), RepoError> {
    Ok(nearcache_sql::sqlx::install(pool).await?)
}

/// The default notification channel of the triggers.
pub const DEFAULT_CHANNEL: &str = "nearcache";
