//! The repository trait and its Postgres implementation.

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgPool};
use time::OffsetDateTime;

use crate::Replans;
use crate::{NewUser, OrgId, Organization, Principal, ProfileUpdate, RepoError, User, UserId};

/// What the reference service needs of its database.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait UserRepo: Send + Sync {
    /// The user with its organization, in one query; `None` if there is no such user.
    ///
    /// # Errors
    /// [`RepoError::Unavailable`] when the database cannot be reached.
    async fn principal(&self, id: UserId) -> Result<Option<Principal>, RepoError>;

    /// Creates an organization.
    ///
    /// # Errors
    /// As for any write.
    async fn create_organization(&self, name: &str, plan: &str) -> Result<Organization, RepoError>;

    /// Creates a user.
    ///
    /// # Errors
    /// [`RepoError::Conflict`] if the email is taken.
    async fn create_user(&self, user: &NewUser) -> Result<User, RepoError>;

    /// Renames an organization.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if there is no such organization.
    async fn rename_organization(&self, id: OrgId, name: &str) -> Result<Organization, RepoError>;

    /// Changes a user's name and/or email.
    ///
    /// # Errors
    /// [`RepoError::NotFound`], or [`RepoError::Conflict`] if the email is taken.
    async fn update_profile(&self, id: UserId, update: &ProfileUpdate) -> Result<User, RepoError>;

    /// Activates or deactivates a user.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if there is no such user.
    async fn set_active(&self, id: UserId, active: bool) -> Result<(), RepoError>;

    /// Records that the user was seen now. Changes no cached column, so notifies nobody.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if there is no such user.
    async fn record_last_seen(&self, id: UserId) -> Result<(), RepoError>;

    /// Deletes a user.
    ///
    /// # Errors
    /// [`RepoError::NotFound`] if there is no such user.
    async fn delete_user(&self, id: UserId) -> Result<(), RepoError>;
}

/// [`UserRepo`] on a sqlx Postgres pool.
#[derive(Debug, Clone)]
pub struct PgUserRepo {
    pool: PgPool,
    replans: Replans,
}

impl PgUserRepo {
    /// A repository on `pool`. A query whose prepared statement a migration made stale runs
    /// once more; give the pool's [`Replans`] with [`PgUserRepo::with_replans`] so that the
    /// pool's other connections are renewed too.
    pub fn new(pool: PgPool) -> Self {
        Self::with_replans(pool, Replans::default())
    }

    /// A repository on `pool`, whose options went through `replans`' [`Replans::guard`].
    pub fn with_replans(pool: PgPool, replans: Replans) -> Self {
        Self { pool, replans }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[derive(sqlx::FromRow)]
struct PrincipalRow {
    id: UserId,
    org_id: OrgId,
    email: String,
    name: String,
    active: bool,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    org_name: String,
    org_plan: String,
    org_created_at: OffsetDateTime,
    org_updated_at: OffsetDateTime,
}

impl From<PrincipalRow> for Principal {
    fn from(r: PrincipalRow) -> Self {
        Principal {
            organization: Organization {
                id: r.org_id,
                name: r.org_name,
                plan: r.org_plan,
                created_at: r.org_created_at,
                updated_at: r.org_updated_at,
            },
            user: User {
                id: r.id,
                org_id: r.org_id,
                email: r.email,
                name: r.name,
                active: r.active,
                created_at: r.created_at,
                updated_at: r.updated_at,
            },
        }
    }
}

const USER_COLUMNS: &str = "id, org_id, email, name, active, created_at, updated_at";
const ORG_COLUMNS: &str = "id, name, plan, created_at, updated_at";

fn found(rows: u64) -> Result<(), RepoError> {
    if rows == 0 {
        Err(RepoError::NotFound)
    } else {
        Ok(())
    }
}

#[async_trait]
impl UserRepo for PgUserRepo {
    async fn principal(&self, id: UserId) -> Result<Option<Principal>, RepoError> {
        let row: Option<PrincipalRow> = self
            .replans
            .retry(|| {
                sqlx::query_as(
                    "SELECT u.id, u.org_id, u.email, u.name, u.active, u.created_at, u.updated_at,
                            o.name AS org_name, o.plan AS org_plan,
                            o.created_at AS org_created_at, o.updated_at AS org_updated_at
                       FROM users u JOIN organizations o ON o.id = u.org_id
                      WHERE u.id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.map(Principal::from))
    }

    async fn create_organization(&self, name: &str, plan: &str) -> Result<Organization, RepoError> {
        let sql = format!(
            "INSERT INTO organizations (name, plan) VALUES ($1, $2) RETURNING {ORG_COLUMNS}"
        );
        Ok(self
            .replans
            .retry(|| {
                sqlx::query_as(AssertSqlSafe(sql.as_str()))
                    .bind(name)
                    .bind(plan)
                    .fetch_one(&self.pool)
            })
            .await?)
    }

    async fn create_user(&self, user: &NewUser) -> Result<User, RepoError> {
        let sql = format!(
            "INSERT INTO users (org_id, email, name) VALUES ($1, $2, $3) RETURNING {USER_COLUMNS}"
        );
        Ok(self
            .replans
            .retry(|| {
                sqlx::query_as(AssertSqlSafe(sql.as_str()))
                    .bind(user.org_id)
                    .bind(&user.email)
                    .bind(&user.name)
                    .fetch_one(&self.pool)
            })
            .await?)
    }

    async fn rename_organization(&self, id: OrgId, name: &str) -> Result<Organization, RepoError> {
        let sql =
            format!("UPDATE organizations SET name = $2 WHERE id = $1 RETURNING {ORG_COLUMNS}");
        Ok(self
            .replans
            .retry(|| {
                sqlx::query_as(AssertSqlSafe(sql.as_str()))
                    .bind(id)
                    .bind(name)
                    .fetch_one(&self.pool)
            })
            .await?)
    }

    async fn update_profile(&self, id: UserId, update: &ProfileUpdate) -> Result<User, RepoError> {
        let sql = format!(
            "UPDATE users SET name = coalesce($2, name), email = coalesce($3, email)
              WHERE id = $1 RETURNING {USER_COLUMNS}"
        );
        Ok(self
            .replans
            .retry(|| {
                sqlx::query_as(AssertSqlSafe(sql.as_str()))
                    .bind(id)
                    .bind(update.name())
                    .bind(update.email())
                    .fetch_one(&self.pool)
            })
            .await?)
    }

    async fn set_active(&self, id: UserId, active: bool) -> Result<(), RepoError> {
        let done = sqlx::query("UPDATE users SET active = $2 WHERE id = $1")
            .bind(id)
            .bind(active)
            .execute(&self.pool)
            .await?;
        found(done.rows_affected())
    }

    async fn record_last_seen(&self, id: UserId) -> Result<(), RepoError> {
        let done = sqlx::query("UPDATE users SET last_seen_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        found(done.rows_affected())
    }

    async fn delete_user(&self, id: UserId) -> Result<(), RepoError> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        found(done.rows_affected())
    }
}
