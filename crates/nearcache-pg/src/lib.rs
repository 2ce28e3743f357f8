//! The Postgres side of the reference service: domain types, the [`UserRepo`] trait and its
//! sqlx implementation [`PgUserRepo`], and the migrations ([`MIGRATOR`]) that create the schema
//! and the change-notification triggers near caches listen to.
//!
//! Depend on it for the reference service's data (the HTTP layer uses its types and trait), or
//! to apply the migrations. With the `mock` feature, `MockUserRepo` is a mockall mock.
//!
//! # Notification triggers for your own tables
//!
//! The migrations install a generic trigger function. Attach it to any table, naming the key
//! column and the columns whose changes must not notify:
//!
//! ```sql
//! SELECT nearcache_attach('invoices', 'id', '{updated_at}');
//! ```
//!
//! Every INSERT, UPDATE, DELETE and TRUNCATE then sends, at commit, compact JSON on the channel
//! named by the setting `nearcache.channel` (default `nearcache`):
//! `{"v":1,"table":"invoices","op":"update","keys":["…"]}`, or `{"v":1,"table":"invoices",
//! "op":"flush"}` after a TRUNCATE or a statement that touched more than `nearcache.max_keys`
//! rows (default 1000). An UPDATE that changed only ignored columns, or nothing, sends nothing.
//! Keys are batched so that each payload stays well under Postgres' 8000-byte limit. See
//! `sql/0002_notify.sql` for the details; `nearcache_detach('invoices')` removes the triggers.

mod domain;
mod error;
mod repo;

pub use domain::{
    NewUser, OrgId, Organization, Principal, ProfileUpdate, User, UserId, ValidationError,
};
pub use error::RepoError;
#[cfg(feature = "mock")]
pub use repo::MockUserRepo;
pub use repo::{PgUserRepo, UserRepo};

/// The migrations of `sql/`: the schema and the notification triggers.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql");

/// The default notification channel of the triggers.
pub const DEFAULT_CHANNEL: &str = "nearcache";
