//! placeholder
/// The migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql");
