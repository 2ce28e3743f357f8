//! Seed data for the demo and the benchmarks: organizations, users and their tokens.

use anyhow::Result;
use jsonwebtoken::{encode, EncodingKey, Header};
use rand::RngExt;

/// The HS256 secret of demo and benchmark instances.
pub const SECRET: &str = "nearcache-demo-secret";

/// Organizations and users seeded.
pub const ORGS: u32 = 100;
/// Users seeded.
pub const USERS: u32 = 10_000;

/// The id of seeded user `i` (1-based); deterministic so that seeding is idempotent.
pub fn user_id(i: u32) -> String {
    format!("00000000-0000-4000-9000-{i:012x}")
}

/// Seeds 100 organizations and 10 000 users, unless they are there.
pub async fn seed(url: &str) -> Result<()> {
    seed_users(url, USERS).await
}

/// Seeds 100 organizations and users 1 to `users`, unless they are there (one statement
/// each, `generate_series`: a million users take seconds).
pub async fn seed_users(url: &str, users: u32) -> Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    sqlx::query(
        "INSERT INTO organizations (id, name, plan)
         SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                'Org ' || i, (ARRAY['free', 'pro', 'enterprise'])[1 + i % 3]
           FROM generate_series(1, $1) i
         ON CONFLICT DO NOTHING",
    )
    .bind(ORGS as i32)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO users (id, org_id, email, name)
         SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(i), 12, '0'))::uuid,
                ('00000000-0000-4000-8000-' || lpad(to_hex(1 + i % $2), 12, '0'))::uuid,
                'user' || i || '@demo.example', 'User ' || i
           FROM generate_series(1, $1) i
         ON CONFLICT DO NOTHING",
    )
    .bind(users as i32)
    .bind(ORGS as i32)
    .execute(&pool)
    .await?;
    // Names may have been changed by an earlier demo; put them back.
    sqlx::query(
        "UPDATE users SET name = 'User ' || substr(email, 5, strpos(email, '@') - 5), active = true
          WHERE email LIKE '%@demo.example'
            AND (name <> 'User ' || substr(email, 5, strpos(email, '@') - 5) OR NOT active)",
    )
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(())
}

/// A token for seeded user `i`, valid for an hour.
pub fn token(i: u32) -> String {
    token_valid_for(i, 3600)
}

/// A token for seeded user `i`, valid for `seconds`.
pub fn token_valid_for(i: u32, seconds: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds;
    encode(
        &Header::default(),
        &serde_json::json!({"sub": user_id(i), "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// Users (1-based) in the order requests visit them: every user once, shuffled (uniform), or
/// `draws` draws of a Zipf distribution with s = 1 (user 1 the most frequent).
pub fn user_order(users: u32, zipf: bool, draws: usize, rng: &mut rand::rngs::StdRng) -> Vec<u32> {
    if !zipf {
        let mut all: Vec<u32> = (1..=users).collect();
        for i in (1..all.len()).rev() {
            all.swap(i, rng.random_range(0..=i));
        }
        return all;
    }
    // Inverse of the cumulative weights 1/k.
    let mut cumulative = Vec::with_capacity(users as usize);
    let mut total = 0.0;
    for k in 1..=users {
        total += 1.0 / f64::from(k);
        cumulative.push(total);
    }
    (0..draws)
        .map(|_| {
            let u = rng.random_range(0.0..total);
            cumulative.partition_point(|c| *c < u) as u32 + 1
        })
        .collect()
}
