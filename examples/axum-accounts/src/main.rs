//! The example service: `DATABASE_URL=… EXAMPLE_JWT_SECRET=… cargo run -p nearcache-example-axum`.

use nearcache_example_axum as example;
use nearcache_tower::{AuthConfig, Authenticator, Key};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let url = std::env::var("DATABASE_URL")?;
    let secret = std::env::var("EXAMPLE_JWT_SECRET")?;
    let db = example::connect(&url).await?;
    example::prepare(&db.pool).await?;

    let caches = example::Caches::new();
    let auth = Authenticator::new(&AuthConfig::new(Key::Secret(secret.into_bytes())))?;
    let stop = CancellationToken::new();
    let source = {
        let (caches, stopped) = (caches.clone(), stop.clone().cancelled_owned());
        tokio::spawn(async move { caches.keep_coherent(&url, stopped).await })
    };

    // Two cached accounts a second checked against the database (nearcache_cache_audit_*).
    let audit = {
        let (caches, db) = (caches.clone(), db.clone());
        tokio::spawn(async move { caches.audit(db, 2.0).await })
    };
    let app = example::router(&caches, db, auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!("listening on http://127.0.0.1:3000");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    stop.cancel();
    audit.abort();
    source.await??;
    Ok(())
}
