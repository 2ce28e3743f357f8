//! PgUserRepo against a real Postgres, a fresh database per test.

use nearcache_pg::{NewUser, PgUserRepo, ProfileUpdate, RepoError, UserId, UserRepo};
use sqlx::PgPool;

async fn seeded(pool: &PgPool) -> (PgUserRepo, nearcache_pg::Organization, nearcache_pg::User) {
    let repo = PgUserRepo::new(pool.clone());
    let org = repo.create_organization("Acme", "pro").await.unwrap();
    let user = repo
        .create_user(&NewUser {
            org_id: org.id,
            email: "ada@acme.io".into(),
            name: "Ada".into(),
        })
        .await
        .unwrap();
    (repo, org, user)
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
async fn the_principal_comes_with_its_organization(pool: PgPool) {
    let (repo, org, user) = seeded(&pool).await;
    let p = repo.principal(user.id).await.unwrap().unwrap();
    assert_eq!(p.user, user);
    assert_eq!(p.organization, org);
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
async fn a_missing_user_is_none(pool: PgPool) {
    let repo = PgUserRepo::new(pool);
    let id = UserId::new(uuid::Uuid::new_v4());
    assert!(repo.principal(id).await.unwrap().is_none());
    assert!(matches!(
        repo.set_active(id, false).await,
        Err(RepoError::NotFound)
    ));
    assert!(matches!(
        repo.delete_user(id).await,
        Err(RepoError::NotFound)
    ));
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
async fn a_duplicate_email_is_a_conflict(pool: PgPool) {
    let (repo, org, _) = seeded(&pool).await;
    let dup = NewUser {
        org_id: org.id,
        email: "ada@acme.io".into(),
        name: "Other".into(),
    };
    assert!(matches!(
        repo.create_user(&dup).await,
        Err(RepoError::Conflict(_))
    ));
    let other = repo
        .create_user(&NewUser {
            email: "grace@acme.io".into(),
            ..dup
        })
        .await
        .unwrap();
    let change = ProfileUpdate::new(None, Some("ada@acme.io")).unwrap();
    assert!(matches!(
        repo.update_profile(other.id, &change).await,
        Err(RepoError::Conflict(_))
    ));
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
async fn writes_change_what_the_principal_shows(pool: PgPool) {
    let (repo, org, user) = seeded(&pool).await;
    let change = ProfileUpdate::new(Some("Ada L."), Some("ADA@lovelace.io")).unwrap();
    let updated = repo.update_profile(user.id, &change).await.unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.email.as_str()),
        ("Ada L.", "ada@lovelace.io")
    );
    assert!(updated.updated_at >= user.updated_at);
    repo.rename_organization(org.id, "Acme 2").await.unwrap();
    repo.set_active(user.id, false).await.unwrap();
    repo.record_last_seen(user.id).await.unwrap();
    let p = repo.principal(user.id).await.unwrap().unwrap();
    assert_eq!(p.organization.name, "Acme 2");
    assert!(!p.user.active);
    repo.delete_user(user.id).await.unwrap();
    assert!(repo.principal(user.id).await.unwrap().is_none());
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    // Nothing listens on port 1.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let repo = PgUserRepo::new(pool);
    let err = repo
        .principal(UserId::new(uuid::Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoError::Unavailable(_)), "{err:?}");
}
